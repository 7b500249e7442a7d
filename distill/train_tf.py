"""Stage 2a: in-context teacher forcing (paper §1.5) turns the bidirectional teacher into a block-causal student.

    python -m distill.train_tf --config distill/configs/tf_tiny.yaml [--resume] [--out DIR] [--max-steps N]
    python -m distill.train_tf --config distill/configs/tf_smoke.yaml --smoke         # < 1 min on CPU
    accelerate launch --multi_gpu --num_processes 4 -m distill.train_tf --config distill/configs/tf_wan2.2-5b.yaml

Sequence `[clean: ref, garment, video] ++ [noisy: ref, garment, video]`; both halves use the same RoPE frame
positions; the clean half has t = 0, each noisy video chunk draws its own timestep (diffusion forcing); attention
follows `teacher_forcing_mask` (dense on CPU) or the equivalent FlexAttention block mask on GPU. The loss is the
bell-weighted flow-matching MSE on the noisy video tokens only. The text encoder is frozen (the teacher's).
Optional, off by default: `tf.context_noise_max` re-noises the clean history (for `stream.context_noise`) and
`tf.self_history` replaces it by the student's own one-step x0 (docs/TRAINING.md, run 4).

Outputs: `step_*/`, `log.csv`, `latest/` (stage folder, EMA weights, refreshed at every eval), `final/`, `loss.png`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fashionchameleon.attention import flex_block_mask, teacher_forcing_mask
from fashionchameleon.sampling import FlowMatching
from fashionchameleon.trainer import StepContext, TrainConfig, Trainer, dataclass_from_dict, load_yaml_config
from teacher.common import (DataConfig, ModelConfig, apply_overrides, build_components, drop_prompts, encode_batch,
                            export_stage, finish_stage, per_frame_bell_mse, plot_curves, region_loss_weight, routed,
                            stage_parser, training_dataset, wrap)


@dataclass
class SmokeConfig:
    max_steps: int = 4
    batch_size: int = 2
    train_length: int = 8


@dataclass
class TFConfig:
    # "uniform": each noisy chunk's t uniform over the shifted 1000-step grid (paper). "student": drawn from the
    # student's own warped denoising steps, the only ones the 4-step sampler ever queries (a CPU-budget choice).
    timesteps: str = "uniform"
    # Exposure bias: the stream conditions each chunk on latents it committed itself (posterior means, flatter than
    # real clips), teacher forcing only on real ones. With probability `self_history` a clip's clean history is
    # replaced by the student's own detached one-step x0 of a noised copy, each chunk at a sigma drawn uniformly
    # from `self_history_sigma`. The targets stay the real latents. 0 = the paper's recipe. (Run 4 measured it to
    # make the tiny student's long streams worse; context noise below is what fixed them. Kept as an ablation.)
    self_history: float = 0.0
    self_history_sigma: tuple[float, float] = (0.25, 0.75)
    # > 0: the clean half's video frames are re-noised to a per-clip timestep ~ U[0, context_noise_max] (and get it
    # as their t), so the student can stream with `stream.context_noise` <= this (see StreamConfig).
    context_noise_max: float = 0.0

    def __post_init__(self):
        if self.timesteps not in ("uniform", "student"):
            raise ValueError(f"tf.timesteps must be 'uniform' or 'student', got {self.timesteps!r}")
        if not 0.0 <= self.self_history <= 1.0:
            raise ValueError(f"tf.self_history is a probability in [0, 1], got {self.self_history}")
        sr = list(self.self_history_sigma)
        lo, hi = (float(sr[0]), float(sr[-1])) if sr else (0.0, 0.0)
        if len(sr) != 2 or not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"tf.self_history_sigma must be [lo, hi] with 0 < lo <= hi <= 1, got "
                             f"{list(self.self_history_sigma)}")
        self.self_history_sigma = (lo, hi)
        if self.context_noise_max < 0:
            raise ValueError(f"tf.context_noise_max must be >= 0, got {self.context_noise_max}")


SECTIONS = {"train": TrainConfig, "model": ModelConfig, "data": DataConfig, "tf": TFConfig, "smoke": SmokeConfig}


class TFMask:
    """The in-context teacher-forcing mask for a sequence shape, built once (dense, or flex on CUDA)."""

    def __init__(self, chunk_frames: int, cond_frames: int):
        self.chunk, self.cond = chunk_frames, cond_frames
        self._cache: dict[tuple, Any] = {}

    def __call__(self, frames: int, tokens_per_frame: int, device: torch.device, flex: bool):
        key = (frames, tokens_per_frame, str(device), flex)
        if key not in self._cache:
            if flex:
                m = flex_block_mask("teacher_forcing", frames, tokens_per_frame, self.chunk, self.cond, device=device)
            else:
                m = teacher_forcing_mask(frames, tokens_per_frame, self.chunk, self.cond, device=device)
            self._cache = {key: m}
        return self._cache[key]


def chunk_timesteps(fm: FlowMatching, batch: int, frames: int, chunk: int, device,
                    choices: torch.Tensor | None = None) -> torch.Tensor:
    """Diffusion forcing: one timestep per chunk, repeated over its frames -> `[B, frames]`.

    `choices` (e.g. the student's warped steps) restricts the draw to those values."""
    n = -(-frames // chunk)
    if choices is None:
        t = fm.sample_train_timesteps((batch, n), device=device)
    else:
        t = choices.float()[torch.randint(0, len(choices), (batch, n))].to(device)
    return t.repeat_interleave(chunk, dim=1)[:, :frames]


def tf_forward(transformer, ref: torch.Tensor, gar: torch.Tensor, clean: torch.Tensor, x_t: torch.Tensor,
               t_video: torch.Tensor, text: torch.Tensor, mask, t_clean: torch.Tensor | None = None) -> torch.Tensor:
    """Flow prediction for the noisy video frames of `[clean ref, gar, video] ++ [ref, gar, x_t]`.

    `t_clean [B, f]`: the timesteps of the clean half's video frames (default 0; > 0 with context noise)."""
    b = clean.shape[0]
    cond = ref.shape[2] + gar.shape[2]
    clean_half = torch.cat([ref, gar, clean], dim=2)
    noisy_half = torch.cat([ref, gar, x_t], dim=2)
    frames = clean_half.shape[2]
    hidden = torch.cat([clean_half, noisy_half], dim=2)
    if t_clean is None:
        t_clean = t_video.new_zeros(b, clean.shape[2])
    zeros = t_video.new_zeros(b, cond)
    timestep = torch.cat([zeros, t_clean, zeros, t_video], dim=1)  # all conditions at t = 0
    pos = torch.arange(frames)
    out = transformer(hidden, timestep, text, frame_positions=torch.cat([pos, pos]), attention_mode="block_causal",
                      attention_mask=mask).sample
    return out[:, :, frames + cond:]


def _mask_for(transformer, masks: TFMask, ref, gar, vid):
    _, ph, pw = transformer.config.patch_size
    tpf = (vid.shape[3] // ph) * (vid.shape[4] // pw)
    frames = ref.shape[2] + gar.shape[2] + vid.shape[2]
    flex = vid.is_cuda and transformer.attn_backend == "flex"
    return masks(frames, tpf, vid.device, flex)  # both builders take the per-half frame count


@torch.no_grad()
def self_history(transformer, fm: FlowMatching, masks: TFMask, ref, gar, vid, text, chunk: int, p: float,
                 sigma_range: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """`vid` with the history of a random `p` of the clips replaced by the model's one-step x0 (see TFConfig).

    Chunk j's x0 sees the real history before it, as in the teacher-forcing pass itself."""
    b, _, f = vid.shape[:3]
    pick = (torch.rand(b, generator=generator) < p).nonzero().flatten().tolist()
    if not pick:
        return vid
    n = len(pick)
    lo, hi = sigma_range
    s = lo + (hi - lo) * torch.rand(n, -(-f // chunk), generator=generator)
    t = (s * fm.num_train_timesteps).repeat_interleave(chunk, dim=1)[:, :f].to(vid.device)
    sub = [x[pick] for x in (ref, gar, vid, text)]
    noise = torch.randn(sub[2].shape, generator=generator).to(vid)
    x_t = fm.add_noise(sub[2], noise, t)
    flow = tf_forward(transformer, sub[0], sub[1], sub[2], x_t, t, sub[3], _mask_for(transformer, masks, *sub[:3]))
    out = vid.clone()
    out[pick] = fm.x0_from_flow(x_t, flow, t).to(vid.dtype)
    return out


def tf_loss(transformer, fm: FlowMatching, masks: TFMask, ref, gar, vid, text, chunk: int,
            noise: torch.Tensor | None = None, t_video: torch.Tensor | None = None,
            weighting: str = "bell", region: torch.Tensor | None = None,
            choices: torch.Tensor | None = None, history: torch.Tensor | None = None,
            context_t: torch.Tensor | None = None) -> torch.Tensor:
    """Flow-matching loss on the noisy half; `history` (default: `vid`) fills the clean half, re-noised to the
    per-clip timesteps `context_t [B]` if given."""
    b, _, f = vid.shape[:3]
    if t_video is None:
        t_video = chunk_timesteps(fm, b, f, chunk, vid.device, choices)
    if noise is None:
        noise = torch.randn_like(vid)
    x_t = fm.add_noise(vid, noise, t_video)
    mask = _mask_for(transformer, masks, ref, gar, vid)
    clean, t_clean = vid if history is None else history, None
    if context_t is not None:
        t_clean = context_t.to(vid.device).float()[:, None].expand(b, f)
        clean = fm.add_noise(clean, torch.randn_like(clean), t_clean)
    pred = tf_forward(transformer, ref, gar, clean, x_t, t_video, text, mask, t_clean)
    return per_frame_bell_mse(fm, pred, fm.training_target(vid, noise), t_video, weighting, region)


def real_clip_loss(transformer, comp, masks: TFMask, batch: dict, ref, gar, vid, text, data: DataConfig,
                   choices: torch.Tensor | None, context_noise_max: float,
                   history: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher-forcing objective on a batch's real clip: region weights from the batch's masks, clean history
    re-noised to t ~ U[0, context_noise_max] per clip (0 = clean). Used by this stage and by the DMD anchor."""
    region = region_loss_weight(batch, vid.shape, comp.preset.temporal_factor, data)
    context_t = torch.rand(vid.shape[0]) * context_noise_max if context_noise_max > 0 else None
    return tf_loss(transformer, comp.fm, masks, ref, gar, vid, text, comp.preset.stream.chunk_frames,
                   weighting=data.loss_weighting, region=region, choices=choices, history=history,
                   context_t=context_t)


def make_step_fn(comp, data: DataConfig, tf: TFConfig = TFConfig()):
    fm, vae, text_enc = comp.fm, comp.vae, comp.text_encoder
    stream = comp.preset.stream
    masks = TFMask(stream.chunk_frames, stream.cond_frames)
    choices = None
    if tf.timesteps == "student":
        choices = fm.few_step_timesteps(stream.denoising_steps, stream.warp_denoising_steps)

    def step_fn(ctx: StepContext, batch: dict) -> dict[str, Any]:
        model = routed(ctx, "student")
        ref, gar, vid = encode_batch(vae, batch, ctx.device)
        text = model.encode(drop_prompts(batch["prompt"], data.text_dropout), text_enc)  # trains iff model.train_text_encoder
        history = None
        if tf.self_history > 0:
            history = self_history(model.transformer, fm, masks, ref, gar, vid, text, stream.chunk_frames,
                                   tf.self_history, tf.self_history_sigma)
        loss = real_clip_loss(model.transformer, comp, masks, batch, ref, gar, vid, text, data, choices,
                              tf.context_noise_max, history)
        return {"loss": loss}

    return step_fn


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = stage_parser(__doc__, "teacher stage folder (overrides model.init)").parse_args(argv)
    cfg = load_yaml_config(args.config, SECTIONS)
    train_cfg, data = apply_overrides(args, cfg["train"], cfg["data"], cfg["smoke"])
    model_cfg: ModelConfig = cfg["model"]
    if args.init:
        model_cfg = dataclass_from_dict(ModelConfig, {**vars(model_cfg), "init": args.init})

    comp = build_components(model_cfg)
    out = Path(train_cfg.output_dir)
    train_ds = training_dataset(data, comp, data.train_length, data.seed)

    def eval_fn(trainer: Trainer) -> dict[str, Any]:
        dest = export_stage(trainer, "student", comp, out / "latest")  # collective
        if not trainer.accelerator.is_main_process:
            return {}
        plot_curves(out / "log.csv", ["loss"], out / "loss.png", f"teacher forcing {comp.preset.name}: FM loss")
        trainer.models["student"].train()
        return {"exported": str(dest)}

    trainer = Trainer(train_cfg, {"student": wrap(comp)}, make_step_fn(comp, data, cfg["tf"]), train_ds,
                      eval_fn=eval_fn)
    comp.place(trainer.accelerator.device, trainer.frozen_dtype)
    res = trainer.train(resume=args.resume, until=args.until)
    card = (f"# Teacher-forcing student ({comp.preset.name})\n\nInitialised from `{model_cfg.init}`; "
            f"{res['step']} steps, {res['samples_seen']} samples, {res['elapsed_s']:.0f} s CPU; "
            f"final FM loss {res.get('loss', float('nan')):.4f}.\n")
    finish_stage(trainer, res, "student", comp, out, card, ("step", "samples_seen", "elapsed_s", "loss"))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
