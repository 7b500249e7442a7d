"""Stage 1: the bidirectional in-context teacher (paper §1.4).

    python -m teacher.train_teacher --config teacher/configs/tiny.yaml [--resume] [--out DIR] [--max-steps N]
    python -m teacher.train_teacher --config teacher/configs/smoke.yaml --smoke      # < 1 min on CPU
    accelerate launch --multi_gpu --num_processes 8 -m teacher.train_teacher --config teacher/configs/wan2.2-5b.yaml

Token layout `[ref, garment, video latents]` on the frame axis, RoPE positions 0..F-1, t = 0 on the two condition
frames, one flow-matching timestep shared by the video frames, bell-weighted MSE on the video frames only, text
dropped to "" with probability `data.text_dropout` (for CFG). Latents come from the frozen VAE; the transformer and
the learned text encoder are trained (umT5 stays frozen).

Outputs under `train.output_dir`: trainer checkpoints `step_*/`, `log.csv`, `eval.jsonl`, `latest/` (stage folder
with EMA weights, refreshed at every eval), `final/` (stage folder at the end), `samples/` (held-out contact sheets)
and `loss.png`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fashionchameleon.trainer import StepContext, TrainConfig, Trainer, dataclass_from_dict, load_yaml_config
from teacher.common import (DataConfig, ModelConfig, apply_overrides, build_components, build_dataset, drop_prompts,
                            encode_batch, export_stage, finish_stage, incontext_flow, per_frame_bell_mse, plot_curves,
                            region_loss_weight, routed, stage_parser, training_dataset, wrap)


@dataclass
class SampleConfig:
    """Held-out samples rendered at every eval (0 examples: skip)."""

    examples: int = 2
    steps: int = 30
    guidance: float = 3.0
    scheduler: str = "unipc"
    split: str = "test"
    seed: int = 0


@dataclass
class SmokeConfig:
    """Overrides applied by --smoke."""

    max_steps: int = 4
    batch_size: int = 2
    train_length: int = 8
    sample_examples: int = 1
    sample_steps: int = 2


SECTIONS = {"train": TrainConfig, "model": ModelConfig, "data": DataConfig, "sample": SampleConfig,
            "smoke": SmokeConfig}


def make_step_fn(comp, data: DataConfig):
    fm = comp.fm
    vae = comp.vae
    frozen_text = comp.text_encoder

    def step_fn(ctx: StepContext, batch: dict) -> dict[str, Any]:
        model = routed(ctx, "teacher")
        ref, gar, vid = encode_batch(vae, batch, ctx.device)
        b = vid.shape[0]
        t = fm.sample_train_timesteps((b,), device=ctx.device)
        noise = torch.randn_like(vid)
        x_t = fm.add_noise(vid, noise, t)
        text = model.encode(drop_prompts(batch["prompt"], data.text_dropout), frozen_text)
        v = incontext_flow(model.transformer, ref, gar, x_t, t, text)
        region = region_loss_weight(batch, vid.shape, comp.preset.temporal_factor, data)
        loss = per_frame_bell_mse(fm, v, fm.training_target(vid, noise), t, data.loss_weighting, region)
        return {"loss": loss}

    return step_fn


def model_card(res: dict, cfg: dict, comp, sheet: str | None) -> str:
    tr: TrainConfig = cfg["train"]
    n = sum(p.numel() for p in comp.transformer.parameters())
    return f"""# FashionChameleon in-context teacher ({comp.preset.name})

Bidirectional in-context teacher (stage 1): `[reference, garment, video]` latents on the frame axis, t = 0 on the
conditions, flow matching (v = eps - x0) with the bell weighting, {cfg['data'].text_dropout:.0%} text dropout for CFG.
Trained on one CPU thread with `python -m teacher.train_teacher --config <config>`.

| | |
|---|---|
| transformer params | {n:,} |
| steps | {res['step']} |
| samples seen | {res['samples_seen']} |
| training CPU time | {res['elapsed_s'] / 3600:.2f} h ({res['elapsed_s']:.0f} s) |
| batch / lr | {tr.batch_size} / {tr.lr:g} ({tr.lr_schedule}, warmup {tr.warmup_steps}) |
| clip | {cfg['data'].frames} frames at {comp.preset.height}x{comp.preset.width} |
| final loss (mean of last log window) | {res.get('loss', float('nan')):.4f} |
| EMA | decay {tr.ema_decay} from step {tr.ema_start_step} |

Weights are the EMA shadow. The `vae/` folder is the frozen VAE whose latent space the teacher was trained in; the
student and the shipped checkpoint carry the same one.

Loss curve: `loss.png`. Held-out samples (test-split people and garments): {sheet or 'see docs/figures/'}.
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = stage_parser(__doc__, "warm start from a stage folder (overrides model.init)")
    ap.add_argument("--vae", help="frozen VAE folder (overrides model.vae; with --init it replaces the init's VAE)")
    args = ap.parse_args(argv)
    cfg = load_yaml_config(args.config, SECTIONS)
    train_cfg, data = apply_overrides(args, cfg["train"], cfg["data"], cfg["smoke"])
    sample: SampleConfig = cfg["sample"]
    if args.smoke:
        s: SmokeConfig = cfg["smoke"]
        sample = dataclass_from_dict(SampleConfig, {**vars(sample), "examples": s.sample_examples,
                                                    "steps": s.sample_steps})
    model_over = {k: v for k, v in (("init", args.init), ("vae", args.vae)) if v}
    if model_over:
        cfg["model"] = dataclass_from_dict(ModelConfig, {**vars(cfg["model"]), **model_over})
    cfg.update(train=train_cfg, data=data, sample=sample)

    comp = build_components(cfg["model"])
    out = Path(train_cfg.output_dir)
    train_ds = training_dataset(data, comp, data.train_length, data.seed)
    examples = []
    if sample.examples:
        held = build_dataset(data, comp.preset, sample.split, sample.examples, data.val_seed)
        examples = [held[i] for i in range(sample.examples)]

    def eval_fn(trainer: Trainer) -> dict[str, Any]:
        dest = export_stage(trainer, "teacher", comp, out / "latest")  # collective
        if not trainer.accelerator.is_main_process:
            return {}
        res: dict[str, Any] = {"exported": str(dest)}
        if examples:
            from teacher.common import load_stage
            from teacher.sample import render_examples

            r = render_examples(load_stage(dest), examples, out / "samples", data.frames, sample.steps,
                                sample.guidance, sample.seed, name=f"step{trainer.step:06d}",
                                scheduler=sample.scheduler, mp4=False)
            res["sheet"] = r["sheet"]
        plot_curves(out / "log.csv", ["loss"], out / "loss.png", f"teacher {comp.preset.name}: bell-weighted FM loss")
        trainer.models["teacher"].train()
        return res

    trainer = Trainer(train_cfg, {"teacher": wrap(comp)}, make_step_fn(comp, data), train_ds, eval_fn=eval_fn)
    comp.place(trainer.accelerator.device, trainer.frozen_dtype)
    res = trainer.train(resume=args.resume, until=args.until)
    finish_stage(trainer, res, "teacher", comp, out, model_card(res, cfg, comp, res.get("sheet")),
                 ("step", "samples_seen", "elapsed_s", "loss"))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
