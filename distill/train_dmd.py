"""Stage 2b: gradient-reweighted DMD with Self-Forcing rollout (paper §1.6).

    python -m distill.train_dmd --config distill/configs/dmd_tiny.yaml [--resume] [--out DIR] [--max-steps N]
    python -m distill.train_dmd --config distill/configs/dmd_smoke.yaml --smoke        # < 1 min on CPU
    accelerate launch --multi_gpu --num_processes 8 -m distill.train_dmd --config distill/configs/dmd_wan2.2-5b.yaml

Networks: generator G (causal student from the TF stage, EMA tracked), real score (the frozen teacher, CFG) and fake
score / critic (bidirectional, initialised from the teacher, trained with flow matching on fresh generator samples).
Every step updates the critic; every `gen_update_every`-th step first updates the generator:

1. roll G out exactly as `StreamingSession.step` does (`distill.rollout`), one exit step per iteration (the same for
   all chunks), gradients only through that step's forward;
2. noise x_hat at t (shifted uniform, clamped), both scores see `[ref, garment, x_t]` bidirectionally;
3. DMD gradient with per-chunk weights A = softmax(-R/tau) from `distill.reward` (tau = inf: vanilla DMD).
"""

from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.dmd import dmd_gradient, real_x0, score_x0, spatial_lowpass, weighted_dmd_loss
from distill.reward import RewardConfig, chunk_rewards, chunk_weights, garment_weight_map
from distill.rollout import draw_exit_step, rollout, swap_rollout
from distill.train_tf import TFMask, real_clip_loss
from fashionchameleon.model import CausalWanTransformer3DModel
from fashionchameleon.reschedule import parse_policy
from fashionchameleon.stream import PRESET_FILE
from fashionchameleon.trainer import StepContext, TrainConfig, Trainer, dataclass_from_dict, load_yaml_config
from teacher.common import (DataConfig, ModelConfig, Triplets, apply_overrides, build_components, build_dataset,
                            export_stage, finish_stage, stage_parser,
                            TextDiT, blank_garment_latent, incontext_flow, load_stage, pixels, plot_curves, routed)


@dataclass
class DMDConfig:
    teacher: str = "runs/teacher_tiny/final"  # real score (frozen) and, by default, the critic's initialisation
    # critic to start from instead of the teacher: the `final_critic/` stage folder of an earlier run, or a
    # transformer folder such as the `critic/` shipped beside a student, so a continuation keeps a critic that
    # already tracks its generator (run 11 restarted it from the teacher and paid for its fidelity gain in flicker)
    critic_init: str | None = None
    guidance: float = 3.0  # CFG scale of the real score
    # > 1: the real score is also guided away from the teacher's answer for a blank garment image (the letterbox
    # canvas), distilling a stronger garment condition into the student (1 = the paper's real score)
    garment_guidance: float = 1.0
    negative_prompt: str = ""
    gen_update_every: int = 5  # 1 generator step per this many critic steps
    critic_lr: float = 4.0e-7
    critic_betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    min_t: float = 20.0
    max_t: float = 980.0
    tau: float = 0.2  # .inf in YAML = vanilla DMD
    chunks: int = 2  # chunks the scores see (the teacher's clip length)
    # > chunks: each iteration rolls out n ~ U{chunks..rollout_chunks} chunks with the student's own rolling cache
    # and scores only the last `chunks` (Self-Forcing++'s window over a long rollout), so the scores also correct
    # what the stream does once its history is all self-made. 0 = rollout of exactly `chunks` (Self-Forcing).
    rollout_chunks: int = 0
    # critic-only steps before the first generator update, so the fake score has learned the generator's (long
    # rollout) distribution before its difference to the real score steers anything
    critic_warmup: int = 0
    # > 0: each generator update also takes this weight times the teacher-forcing loss of the generator on the
    # batch's real clip (`distill.train_tf.real_clip_loss`, at the student's warped steps), so the generator is pulled
    # towards real data as well as towards the teacher's samples. Needs `data.frames` > 1. 0 = the paper's DMD.
    # (Run 9: it slowed the garment gain and the long-stream drift at the same rate.)
    tf_anchor: float = 0.0
    tf_anchor_context_noise_max: float = 0.0  # the anchor's clean history re-noised to t ~ U[0, this] per clip
    # > 0: the DMD gradient is Gaussian-blurred over space (sigma in latent cells) before it reaches the generator,
    # so only the teacher's coarse signal is distilled, not the high-frequency texture of its samples (run 9: it
    # did not stop the long-stream drift)
    grad_lowpass: float = 0.0
    # a second frozen teacher for the fine noise levels: at t <= detail_max_t the real score is this teacher's
    # (same CFG and garment guidance), above it `teacher`'s, so one teacher can give the body and another the
    # garment's pattern. Session 22 (session-20 teacher above, run 5's below): both are decided between t = 500
    # and 750, so the split point trades one for the other.
    detail_teacher: str | None = None
    detail_max_t: float = 0.0
    # > 0: this share of iterations (seeded by the step, the same on every rank) roll out a garment swap as the
    # stream does it (`distill.rollout.swap_rollout` with `swap_policy`): one chunk in the batch's garment, then the
    # next sample's garment (the batch rolled by one; with batch 1 the same garment) with the last decoded frame
    # re-encoded as the reference. Both scores judge the chunks after the swap against [the original reference, the
    # new garment]. Session 22: no gain (the after-swap pattern loss it targeted was the case mix).
    swap_prob: float = 0.0
    swap_policy: str = "anchored"
    # > 1: the DMD loss of the latent cells the evaluation model segments as upper garment (on the decoded chunks)
    # is multiplied by this, so the garment's share of the teacher's signal is not set by how much of the frame the
    # body covers (session 22: 3 did not change the students' loss of dots and checks)
    garment_weight: float = 1.0
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self):
        if self.gen_update_every < 1 or self.chunks < 1:
            raise ValueError("gen_update_every and chunks must be >= 1")
        if not (math.isfinite(self.garment_guidance) and self.garment_guidance >= 0):
            raise ValueError(f"dmd.garment_guidance must be finite and >= 0, got {self.garment_guidance}")
        if self.critic_warmup < 0:
            raise ValueError(f"dmd.critic_warmup must be >= 0, got {self.critic_warmup}")
        if self.detail_teacher and not self.detail_max_t > 0:
            raise ValueError("dmd.detail_teacher needs dmd.detail_max_t > 0 (the noise level below which it scores)")
        if not 0.0 <= self.swap_prob <= 1.0:
            raise ValueError(f"dmd.swap_prob must be in [0, 1], got {self.swap_prob}")
        if parse_policy(self.swap_policy)[0] not in ("disentangle", "anchored"):
            raise ValueError(f"dmd.swap_policy must be disentangle or anchored (with options), got {self.swap_policy!r}")
        if not (math.isfinite(self.garment_weight) and self.garment_weight > 0):
            raise ValueError(f"dmd.garment_weight must be finite and > 0, got {self.garment_weight}")
        for name in ("tf_anchor", "tf_anchor_context_noise_max", "grad_lowpass", "detail_max_t"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"dmd.{name} must be finite and >= 0, got {v}")
        if self.rollout_chunks and self.rollout_chunks < self.chunks:
            raise ValueError(f"dmd.rollout_chunks ({self.rollout_chunks}) must be 0 or >= dmd.chunks "
                             f"({self.chunks})")


@dataclass
class SmokeConfig:
    max_steps: int = 5
    batch_size: int = 1
    train_length: int = 8


SECTIONS = {"train": TrainConfig, "model": ModelConfig, "data": DataConfig, "dmd": DMDConfig, "smoke": SmokeConfig}


@torch.no_grad()
def encode_conditions(vae, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    dt = next(vae.parameters()).dtype
    ref = vae.encode_image(pixels(batch["reference"], device, dt)).float()
    gar = vae.encode_image(pixels(batch["garment"], device, dt)).float()
    return ref, gar


@torch.no_grad()
def blank_garment(vae, batch: dict, device) -> torch.Tensor:
    """Latents of empty product images (all white: the letterbox canvas), one per garment of the batch."""
    return blank_garment_latent(vae, pixels(batch["garment"], device, next(vae.parameters()).dtype))


def load_critic(path: str | os.PathLike) -> torch.nn.Module:
    """The critic's transformer from a stage folder (`final_critic/`) or a bare transformer folder (`critic/`)."""
    p = Path(path)
    if (p / PRESET_FILE).is_file():
        return load_stage(p).transformer
    if (p / "config.json").is_file():
        return CausalWanTransformer3DModel.from_pretrained(p, use_safetensors=True).float()
    raise FileNotFoundError(f"dmd.critic_init {str(p)!r} is neither a stage folder ({PRESET_FILE}) nor a "
                            "transformer folder (config.json)")


def check_critic_shape(teacher: torch.nn.Module, critic: torch.nn.Module, dmd: DMDConfig) -> None:
    """The critic must be the teacher's architecture: both scores are read on the same noised sample."""
    a, b = dict(teacher.config), dict(critic.config)
    diff = sorted(k for k in set(a) | set(b) if not k.startswith("_") and a.get(k) != b.get(k))
    if diff:
        raise ValueError(f"dmd.critic_init {dmd.critic_init!r} is not the teacher's architecture ({dmd.teacher!r}): "
                         + ", ".join(f"{k} {b.get(k)!r} vs {a.get(k)!r}" for k in diff))


def rollout_length(dmd: DMDConfig, seed: int, step: int) -> int:
    """Chunks rolled out at this iteration: `chunks`, or uniform in [chunks, rollout_chunks] (same on every rank)."""
    if not dmd.rollout_chunks or dmd.rollout_chunks == dmd.chunks:
        return dmd.chunks
    g = torch.Generator().manual_seed(seed * 1_000_033 + step)
    return int(torch.randint(dmd.chunks, dmd.rollout_chunks + 1, (1,), generator=g))


def swap_step(dmd: DMDConfig, seed: int, step: int) -> bool:
    """Whether iteration `step` rolls out a garment swap (`dmd.swap_prob`; the same on every rank)."""
    if dmd.swap_prob <= 0:
        return False
    g = torch.Generator().manual_seed(seed * 1_000_033 + step + 17)
    return bool(torch.rand((), generator=g) < dmd.swap_prob)


def generator_step(dmd: DMDConfig, step: int) -> bool:
    """Whether iteration `step` updates the generator: every `gen_update_every`-th step after the critic warm-up."""
    return step >= dmd.critic_warmup and (step - dmd.critic_warmup) % dmd.gen_update_every == 0


def real_score_text_encoder(teacher_comp, comp) -> torch.nn.Module | None:
    """The text encoder the real score must read: the teacher's own where its embeddings differ from the
    generator's (a teacher trained further with `train_text_encoder: true`, as in sessions 19-20), else None (the
    generator's serves both). A frozen encoder referenced by path (umT5) is shared when the paths agree."""
    t_enc, g_enc = teacher_comp.text_encoder, comp.text_encoder
    if not (hasattr(t_enc, "save_pretrained") and hasattr(g_enc, "save_pretrained")):
        if teacher_comp.preset.text == comp.preset.text:
            return None
    elif type(t_enc) is type(g_enc):
        a, b = t_enc.state_dict(), g_enc.state_dict()
        if a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k].float(), b[k].float())
                                        for k in a):
            return None
    return t_enc.requires_grad_(False).eval()


def make_step_fn(comp, dmd: DMDConfig, seed: int, data: DataConfig | None = None,
                 real_text: torch.nn.Module | None = None, detail_text: torch.nn.Module | None = None):
    """`real_text` / `detail_text`: the teacher's (detail teacher's) own text encoder where it differs from the
    generator's (`real_score_text_encoder`); the real score then reads its embeddings, the critic the generator's.
    With `dmd.detail_teacher`, `ctx.models["detail"]` scores the samples noised to t <= `dmd.detail_max_t`."""
    fm, vae, text_enc, preset = comp.fm, comp.vae, comp.text_encoder, comp.preset
    stream = preset.stream
    if dmd.tf_anchor > 0 and (data is None or data.frames < 2):
        raise ValueError("dmd.tf_anchor needs real clips: set data.frames to a clip length (> 1)")
    if dmd.tf_anchor > 0:  # the anchor is the TF stage's loss at the sampler's steps
        masks = TFMask(stream.chunk_frames, stream.cond_frames)
        steps = fm.few_step_timesteps(stream.denoising_steps, stream.warp_denoising_steps)

    def sample_t(b, device):
        return fm.sample_train_timesteps((b,), device=device).clamp(dmd.min_t, dmd.max_t)

    blank: dict[tuple, torch.Tensor] = {}  # blank-garment latents per batch shape: constant, encoded once
    evaluator = []  # the evaluation model for `dmd.garment_weight`, loaded at first use

    def step_fn(ctx: StepContext, batch: dict) -> dict[str, Any]:
        gen, critic, real = routed(ctx, "generator"), routed(ctx, "critic"), ctx.models["teacher"]
        ref, gar = encode_conditions(vae, batch, ctx.device)
        b = ref.shape[0]
        with torch.no_grad():
            text_c = text_enc(list(batch["prompt"])).to(ctx.device)
            text_u = text_enc([dmd.negative_prompt] * b).to(ctx.device)
        out: dict[str, Any] = {}
        n = rollout_length(dmd, seed, ctx.step)
        swap = swap_step(dmd, seed, ctx.step)
        gar_pix = pixels(batch["garment"], ctx.device)
        if swap:  # the scored chunks wear the next sample's garment, reached through a swap
            gar_old, gar, gar_pix = gar, gar.roll(1, dims=0), gar_pix.roll(1, dims=0)

        def roll(tr, num, exit_step, **kw):
            if swap:
                return swap_rollout(tr, fm, stream, vae, ref, gar_old, gar, text_c, num, exit_step,
                                    policy=dmd.swap_policy, **kw)
            return rollout(tr, fm, stream, ref, gar, text_c, num, exit_step, **kw)

        out["swap"] = float(swap)
        if generator_step(dmd, ctx.step):
            exit_step = draw_exit_step(stream, seed, ctx.step)
            x = torch.cat(roll(gen.transformer, n, exit_step, grad=True, grad_last=dmd.chunks)[-dmd.chunks:], dim=2)
            t = sample_t(b, ctx.device)
            x_t = fm.add_noise(x.detach(), torch.randn_like(x), t)
            gar_null = None
            if dmd.garment_guidance != 1.0:
                key = tuple(batch["garment"].shape)
                if key not in blank:
                    blank[key] = blank_garment(vae, batch, ctx.device)
                gar_null = blank[key]

            def own_text(enc):
                if enc is None:
                    return text_c, text_u
                with torch.no_grad():
                    return (enc(list(batch["prompt"])).to(ctx.device),
                            enc([dmd.negative_prompt] * b).to(ctx.device))

            if not dmd.detail_teacher:
                x0_real, x0_fake = score_x0(fm, real.transformer, critic.transformer, ref, gar, x_t, t, text_c,
                                            text_u, dmd.guidance, dmd.garment_guidance, gar_null, own_text(real_text))
            else:  # each sample is scored by one teacher, chosen by its noise level
                low = t <= dmd.detail_max_t
                x0_real = torch.empty_like(x_t)
                for net, enc, sel in ((real, real_text, ~low), (ctx.models["detail"], detail_text, low)):
                    if sel.any():
                        i = sel.nonzero().squeeze(1)
                        c, u = own_text(enc)
                        x0_real[i] = real_x0(fm, net.transformer, ref[i], gar[i], x_t[i], t[i], c[i], u[i],
                                             dmd.guidance, dmd.garment_guidance,
                                             None if gar_null is None else gar_null[i]).to(x0_real.dtype)
                with torch.no_grad():
                    x0_fake = fm.x0_from_flow(x_t, incontext_flow(critic.transformer, ref, gar, x_t, t, text_c), t)
                out["detail_share"] = low.float().mean()
            grad = spatial_lowpass(dmd_gradient(x, x0_real, x0_fake), dmd.grad_lowpass)
            pix = None
            if dmd.garment_weight != 1.0 or not (math.isinf(dmd.tau) or dmd.reward.kind == "none"):
                with torch.no_grad():
                    pix = vae.decode(x.detach().to(next(vae.parameters()).dtype))
            if math.isinf(dmd.tau) or dmd.reward.kind == "none":
                rewards = torch.zeros(b, dmd.chunks, device=ctx.device)
            else:
                rewards = chunk_rewards(pix, gar_pix, dmd.reward, preset.temporal_factor, stream.chunk_frames)
            w = chunk_weights(rewards, stream.chunk_frames, x.shape[2], dmd.tau)
            spatial = None
            if dmd.garment_weight != 1.0:
                if not evaluator:
                    from fashionchameleon.evaluate import Evaluator

                    evaluator.append(Evaluator())
                spatial = garment_weight_map(pix, evaluator[0], dmd.garment_weight, preset.temporal_factor,
                                             tuple(x.shape[-2:]))
                out["garment_share"] = ((spatial - 1) / (dmd.garment_weight - 1)).mean()
            loss_g = weighted_dmd_loss(x, grad, w, spatial)
            if dmd.tf_anchor > 0:
                with torch.no_grad():
                    vid = vae.encode_video(pixels(batch["video"], ctx.device, next(vae.parameters()).dtype)).float()
                loss_a = real_clip_loss(gen.transformer, comp, masks, batch, ref, gar_old if swap else gar, vid,
                                        text_c, data, steps, dmd.tf_anchor_context_noise_max)
                out["anchor_loss"] = loss_a.detach()
                loss_g = loss_g + dmd.tf_anchor * loss_a
            ctx.update("generator", loss_g)
            out.update(gen_loss=loss_g.detach(), exit_step=exit_step, reward=rewards.mean(),
                       reward_first=rewards[:, 0].mean(), reward_last=rewards[:, -1].mean(),
                       weight_last=w[:, -stream.chunk_frames:].sum(1).mean())
            fresh = x.detach()
        else:
            with torch.no_grad():
                fresh = torch.cat(roll(gen.transformer, n, draw_exit_step(stream, seed, ctx.step))[-dmd.chunks:], dim=2)
        # critic: flow matching on fresh generator samples, video tokens only
        t = sample_t(b, ctx.device)
        noise = torch.randn_like(fresh)
        x_t = fm.add_noise(fresh, noise, t)
        v = incontext_flow(critic.transformer, ref, gar, x_t, t, text_c)
        loss_c = (v.float() - fm.training_target(fresh, noise).float()).pow(2).mean()
        ctx.update("critic", loss_c)
        out["critic_loss"] = loss_c.detach()
        return out

    return step_fn


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = stage_parser(__doc__, "generator stage folder (overrides model.init)")
    ap.add_argument("--teacher", help="teacher stage folder (overrides dmd.teacher)")
    ap.add_argument("--tau", type=float, help="reward temperature (overrides dmd.tau; inf = vanilla DMD)")
    args = ap.parse_args(argv)
    cfg = load_yaml_config(args.config, SECTIONS)
    train_cfg, data = apply_overrides(args, cfg["train"], cfg["data"], cfg["smoke"])
    model_cfg: ModelConfig = cfg["model"]
    dmd: DMDConfig = cfg["dmd"]
    if args.init:
        model_cfg = dataclass_from_dict(ModelConfig, {**vars(model_cfg), "init": args.init})
    if args.teacher:
        dmd.teacher = args.teacher
    if args.tau is not None:
        if not args.tau > 0:
            ap.error(f"--tau must be > 0 (inf for vanilla DMD), got {args.tau}")
        dmd.tau = args.tau
    if data.latent_cache:
        ap.error("data.latent_cache feeds the teacher and teacher-forcing stages; GR-DMD needs the garment "
                 "pixels (reward, blank garment), so remove it from this config")

    comp = build_components(model_cfg)  # generator (+ the shared frozen VAE and text encoder)
    comp.text_encoder.requires_grad_(False)
    gen = TextDiT(comp.transformer, None)
    teacher_comp = load_stage(dmd.teacher)
    critic = TextDiT(load_critic(dmd.critic_init) if dmd.critic_init else copy.deepcopy(teacher_comp.transformer), None)
    real = TextDiT(teacher_comp.transformer.requires_grad_(False).eval(), None)
    check_critic_shape(real.transformer, critic.transformer, dmd)
    real_text = real_score_text_encoder(teacher_comp, comp)
    if real_text is not None:
        print(f"[dmd] the teacher's text encoder differs from the generator's: the real score reads its own "
              f"({dmd.teacher})", flush=True)
    models = {"generator": gen, "critic": critic, "teacher": real}
    detail_text = None
    if dmd.detail_teacher:
        detail_comp = load_stage(dmd.detail_teacher)
        models["detail"] = TextDiT(detail_comp.transformer.requires_grad_(False).eval(), None)
        c_in = (real.transformer.config.in_channels, models["detail"].transformer.config.in_channels)
        if c_in[0] != c_in[1]:
            raise ValueError(f"dmd.detail_teacher {dmd.detail_teacher!r} reads {c_in[1]} latent channels, the "
                             f"teacher {c_in[0]}: both must score the generator's latents")
        detail_text = real_score_text_encoder(detail_comp, comp)
    out = Path(train_cfg.output_dir)
    data_ds = Triplets(build_dataset(data, comp.preset, "train", data.train_length, data.seed))

    opts = {
        "generator": torch.optim.AdamW([p for p in gen.parameters() if p.requires_grad], lr=train_cfg.lr,
                                       betas=tuple(train_cfg.betas), weight_decay=train_cfg.weight_decay),
        "critic": torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=dmd.critic_lr,
                                    betas=tuple(dmd.critic_betas), weight_decay=train_cfg.weight_decay),
    }

    def eval_fn(trainer: Trainer) -> dict[str, Any]:
        dest = export_stage(trainer, "generator", comp, out / "latest")  # collective
        if not trainer.accelerator.is_main_process:
            return {}
        plot_curves(out / "log.csv", ["gen_loss", "critic_loss"], out / "loss.png",
                    f"DMD {comp.preset.name} (tau={dmd.tau})")
        return {"exported": str(dest)}

    trainer = Trainer(train_cfg, models, make_step_fn(comp, dmd, train_cfg.seed, data, real_text, detail_text),
                      data_ds, optimizers=opts, eval_fn=eval_fn)
    comp.place(trainer.accelerator.device, trainer.frozen_dtype)
    for enc in (real_text, detail_text):
        if enc is not None:
            enc.to(trainer.accelerator.device)
    res = trainer.train(resume=args.resume, until=args.until)
    card = (f"# GR-DMD generator ({comp.preset.name})\n\nGenerator from `{model_cfg.init}`, teacher "
            f"`{dmd.teacher}`, tau={dmd.tau}, reward={dmd.reward.kind}; {res['step']} steps, "
            f"{res['elapsed_s']:.0f} s CPU.\n")
    finish_stage(trainer, res, "generator", comp, out, card,
                 ("step", "samples_seen", "elapsed_s", "gen_loss", "critic_loss"))
    critic_card = (f"# GR-DMD critic ({comp.preset.name})\n\nFake score of the generator in `final/` after "
                   f"{res['step']} steps (started from `{dmd.critic_init or dmd.teacher}`). Continue with "
                   f"`dmd.critic_init: <this folder>`.\n")
    export_stage(trainer, "critic", teacher_comp, out / "final_critic", critic_card, ema=False)  # collective
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
