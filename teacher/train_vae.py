"""Train the demo `FastVAE` on mannequin-world clips and report held-out PSNR.

    python -m teacher.train_vae --config teacher/configs/vae_tiny.yaml [--smoke] [--resume] [--out DIR] [--max-steps N]
    # decoder-only fine-tune of a trained VAE: frozen encoder (the latent space, and every DiT trained in it, stay
    # valid) and noisy latents, so the decoder learns to absorb a diffusion model's latent error
    python -m teacher.train_vae --config teacher/configs/vae_tiny_dec.yaml
    # a fast decoder for another VAE's latent space (finetune.encoder, e.g. the Wan2.2 VAE of a real-weight stage):
    # exported as a HybridVAE (that encoder + the trained FastVAE decoder), a drop-in `vae/` for stage folders
    python -m teacher.train_vae --config teacher/configs/vae_fastdec_wan2.2-5b.yaml

Outputs (under `train.output_dir` or --out): trainer checkpoints `step_XXXXXX/`, `log.csv`, `eval.jsonl`,
`best/` (EMA weights with the best val PSNR so far), `final/` (EMA weights at the end) and `eval.json`.
Exported folders carry per-channel latent mean/std measured on training clips, so `load_vae(dir).encode_video`
gives roughly unit-scale latents for the diffusion model.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fashionchameleon.trainer import (StepContext, TrainConfig, Trainer, apply_cli_overrides, dataclass_from_dict,
                                     load_yaml_config)
from fashionchameleon.vae import FastVAE, HybridVAE, decoder_fields, latent_frames, load_vae
from teacher.common import stage_parser


@dataclass
class DataConfig:
    height: int = 160
    width: int = 128
    frames: int = 9  # 1 + temporal_factor * k
    train_length: int = 4096  # clips per epoch (rendered on the fly)
    val_length: int = 16
    seed: int = 0
    val_seed: int = 12345
    # "world" renders mannequin clips; "folder" reads the videos of a real-data folder (meta_data.csv, docs/DATA.md):
    # `root` for training, `val_root` held out (default: the last `val_length` rows of `root`, not trained on)
    source: str = "world"
    root: str | None = None
    val_root: str | None = None
    fps: float | None = None  # resample folder clips to this rate (None: as stored)

    def __post_init__(self):
        if self.source not in ("world", "folder"):
            raise ValueError(f"data.source must be 'world' or 'folder', got {self.source!r}")
        if self.source == "folder" and not self.root:
            raise ValueError("data.source: folder needs data.root (a folder with meta_data.csv)")


@dataclass
class LossConfig:
    l1: float = 1.0
    mse: float = 1.0
    edge: float = 0.5  # L1 on spatial finite differences: keeps edges sharp
    # L1 on frame-to-frame differences. Alone it makes a held decoder hold more (run 10: where the decoder cannot
    # place a moving edge, L1's optimum is no change); it is used with `FastVAE.shortcut_motion`.
    temporal: float = 0.0
    latent_l2: float = 1e-4  # keeps raw latents bounded so normalisation is well conditioned


@dataclass
class EvalConfig:
    stats_clips: int = 32  # training clips used to measure latent mean/std
    batch_size: int = 4


@dataclass
class SmokeConfig:
    """Overrides applied by --smoke."""

    max_steps: int = 20
    train_length: int = 16
    val_length: int = 2
    stats_clips: int = 4
    batch_size: int = 2


@dataclass
class FinetuneConfig:
    init: str | None = None  # VAE folder to start from (its `config.json` replaces the `model` section)
    freeze_encoder: bool = False  # keep the latent space (and its mean/std) of `init` exactly
    # decoder input noise: z + s * std * eps with s ~ U(0, latent_noise) per clip (std = the latent std, so s is
    # in the diffusion model's normalised units); 0 = plain reconstruction
    latent_noise: float = 0.0
    eval_noise: float = 0.2  # also report val PSNR when the latents carry this much noise
    # config keys of `init` to change before fine-tuning; only ones that add no weights (e.g. shortcut_motion)
    overrides: dict | None = None
    # a VAE folder (Wan or FastVAE) whose normalised latents the `model` FastVAE learns to decode; that encoder stays
    # frozen, the FastVAE's own encoder is unused, and the export is a HybridVAE of the two
    encoder: str | None = None

    def __post_init__(self):
        if self.latent_noise < 0 or self.eval_noise < 0:
            raise ValueError("finetune.latent_noise and eval_noise must be >= 0")
        if self.freeze_encoder and not self.init:
            raise ValueError("finetune.freeze_encoder needs finetune.init (a trained VAE folder)")
        if self.encoder and (self.init or self.freeze_encoder or self.overrides):
            raise ValueError("finetune.encoder trains a new decoder from the `model` section; it excludes "
                             "finetune.init, freeze_encoder and overrides")


SECTIONS = {"train": TrainConfig, "model": dict, "data": DataConfig, "loss": LossConfig, "eval": EvalConfig,
            "smoke": SmokeConfig, "finetune": FinetuneConfig}


class MannequinClips(torch.utils.data.Dataset):
    """Video-only view of the mannequin world (skips the reference/product renders a VAE does not need)."""

    def __init__(self, split: str, size: tuple[int, int], frames: int, length: int, seed: int):
        from fashionchameleon.data.world import MannequinWorld

        self.world, self.split, self.size, self.frames = MannequinWorld(), split, size, frames
        self.length, self.offset = length, seed * length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = self.world
        s = w.triplet_seeds(self.offset + i, self.split)
        video, _ = w.render_frames(w.sample_person(s["person"]), w.sample_upper_garment(s["upper"]),
                                   w.sample_lower_garment(s["lower"]), w.sample_background(s["background"]),
                                   w.sample_motion(s["motion"]), self.frames, self.size)
        x = torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # [3,T,H,W] in [-1,1]
        return {"video": x}


def world_dataset(split: str, data: DataConfig, length: int, seed: int):
    return MannequinClips(split, (data.height, data.width), data.frames, length, seed)


def clip_datasets(data: DataConfig, train_length: int, val_length: int):
    """(train, val) datasets whose items hold a `video` in [-1, 1]; the folder's held-out rows are never trained."""
    if data.source == "world":
        return (world_dataset("train", data, train_length, data.seed),
                world_dataset("val", data, val_length, data.val_seed))
    from fashionchameleon.data.folder import FolderDataset

    kw = dict(size=(data.height, data.width), frames=data.frames, fps=data.fps)
    train = FolderDataset(data.root, **kw)
    if data.val_root:
        val = FolderDataset(data.val_root, **kw)
        val = torch.utils.data.Subset(val, range(min(val_length, len(val))))
    else:
        n = len(train)
        if n <= val_length:
            raise ValueError(f"data.root {data.root} has {n} rows: too few to hold out val_length={val_length} "
                             "(set data.val_root or lower data.val_length)")
        train, val = (torch.utils.data.Subset(train, range(n - val_length)),
                      torch.utils.data.Subset(train, range(n - val_length, n)))
    return train, val


class VideoOnly(torch.utils.data.Dataset):
    """Keep only the `video` entry (the trainer batches tensors)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ds[i]["video"]


def edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def temporal_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the frame-to-frame differences of two `[B,C,T,H,W]` videos."""
    if a.shape[2] < 2:
        return a.new_zeros(())
    return ((a[:, :, 1:] - a[:, :, :-1]) - (b[:, :, 1:] - b[:, :, :-1])).abs().mean()


def make_step_fn(loss_cfg: LossConfig, ft: FinetuneConfig | None = None, encoder=None):
    """`encoder`: the frozen VAE of `finetune.encoder`, whose normalised latents the decoder is trained on."""
    ft = ft or FinetuneConfig()

    def step_fn(ctx: StepContext, video: torch.Tensor) -> dict[str, Any]:
        # through the (possibly DDP-wrapped) forward; a frozen encoder gets no gradient either way
        scale = torch.rand(video.shape[0], device=video.device) * ft.latent_noise if ft.latent_noise else None
        latents = encoder.to(video.device).encode_video(video) if encoder is not None else None
        recon, z = ctx.models["vae"](video, scale, latents=latents)
        l1 = (recon - video).abs().mean()
        mse = (recon - video).pow(2).mean()
        loss = loss_cfg.l1 * l1 + loss_cfg.mse * mse
        if not ft.freeze_encoder and encoder is None:
            loss = loss + loss_cfg.latent_l2 * z.pow(2).mean()
        if loss_cfg.edge:
            loss = loss + loss_cfg.edge * edge_l1(recon, video)
        out = {"loss": loss, "l1": l1.detach(), "psnr_train": psnr(mse.detach())}
        if loss_cfg.temporal:
            tl = temporal_l1(recon, video)
            out.update(loss=loss + loss_cfg.temporal * tl, temporal_l1=tl.detach())
        return out

    return step_fn


def psnr(mse: torch.Tensor | float) -> float:
    # pixels in [-1, 1]: peak-to-peak 2
    mse = float(mse)
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def reconstruct(vae: FastVAE, clips: list[torch.Tensor], batch_size: int, noise: float = 0.0) -> torch.Tensor:
    """Encode -> decode of `clips` (stacked); with `noise`, the latents get that much noise (fixed seed)."""
    vae.eval()
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(0, len(clips), batch_size):
        z = vae.encode_video(torch.stack(clips[i : i + batch_size]).to(vae.device))
        if noise:
            z = z + noise * torch.randn(z.shape, generator=g).to(z)
        out.append(vae.decode(z))
    return torch.cat(out)


def clip_psnr(recon: torch.Tensor, clips: list[torch.Tensor]) -> float:
    """Mean per-clip PSNR of a `reconstruct` output against its clips."""
    x = torch.stack(clips).to(recon.device)
    return sum(psnr((recon[j] - x[j]).pow(2).mean()) for j in range(len(clips))) / len(clips)


def evaluate_psnr(vae: FastVAE, clips: list[torch.Tensor], batch_size: int, noise: float = 0.0) -> float:
    """Mean held-out PSNR of encode -> decode; with `noise`, the latents get that much noise (fixed seed)."""
    return clip_psnr(reconstruct(vae, clips, batch_size, noise), clips)


def latent_step_ratio(video: torch.Tensor, temporal_factor: int) -> float:
    """Mean |frame difference| onto the first frame of each latent group, over the mean onto the other frames
    (`[B,C,T,H,W]`, T = 1 + tf*k). Smooth motion gives ~1; a decoder that holds each latent still and jumps at the
    next gives >> 1. A monitor only: less noise inside a group also raises it, so judge motion with
    benchmarks/vae_motion.py (landmarks)."""
    d = (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))  # d[i]: frame i -> i + 1
    onto_first = torch.tensor([i % temporal_factor == 0 for i in range(d.shape[0])])
    if onto_first.all() or not onto_first.any():
        return float("nan")
    return float(d[onto_first].mean() / d[~onto_first].mean().clamp_min(1e-8))


@torch.no_grad()
def latent_stats(vae: FastVAE, clips: list[torch.Tensor], batch_size: int) -> tuple[list[float], list[float]]:
    zs = [vae.encode_raw(torch.stack(clips[i : i + batch_size]).to(vae.device))
          for i in range(0, len(clips), batch_size)]
    z = torch.cat([t.transpose(0, 1).flatten(1) for t in zs], dim=1)  # [C, N]
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-6).tolist()


def export(vae: FastVAE | HybridVAE, dest: Path, stats: tuple[Any, Any] | None, fp16: bool = False) -> None:
    """Write `vae` with latent `stats` (mean, std) in its config; None keeps the config's (a HybridVAE's)."""
    m = copy.deepcopy(vae).cpu().float()
    if stats is not None:
        m.register_to_config(latents_mean=stats[0], latents_std=stats[1])
    if fp16:
        m = m.half()
    m.save_pretrained(str(dest), safe_serialization=True)


def decoder_config(model: dict[str, Any], encoder) -> dict[str, Any]:
    """The `model` section of a decoder for `encoder`'s normalised latents: its latent layout, identity latent
    stats, no colour shortcut; a conflicting entry is an error rather than silently replaced."""
    fixed = decoder_fields(encoder)
    clash = {k: (model[k], v) for k, v in fixed.items() if k in model and model[k] != v}
    if clash:
        raise ValueError("model section conflicts with finetune.encoder (given, required): "
                         + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in clash.items()))
    return {**model, **fixed}


def hybrid_config(vae: HybridVAE) -> dict[str, Any]:
    return {"encoder": type(vae.encoder).__name__, "decoder": dict(vae.decoder.config)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = stage_parser(__doc__, init_help=None).parse_args(argv)

    cfg = load_yaml_config(args.config, SECTIONS)
    train_cfg: TrainConfig = cfg["train"]
    data: DataConfig = cfg["data"]
    ev: EvalConfig = cfg["eval"]
    if args.smoke:
        s: SmokeConfig = cfg["smoke"]
        data = dataclass_from_dict(DataConfig, {**vars(data), "train_length": s.train_length,
                                                "val_length": s.val_length})
        ev = dataclass_from_dict(EvalConfig, {**vars(ev), "stats_clips": s.stats_clips})
    train_cfg = apply_cli_overrides(train_cfg, cfg["smoke"] if args.smoke else None, args.max_steps, args.out,
                                    args.threads)

    ft: FinetuneConfig = cfg["finetune"]
    encoder = None
    if ft.encoder:
        encoder = load_vae(ft.encoder).float().requires_grad_(False)
        vae = FastVAE(**decoder_config(cfg["model"], encoder))
        vae.encoder.requires_grad_(False)  # unused: the latents come from `encoder`
    elif ft.init:
        vae = load_vae(ft.init).float()
        if not isinstance(vae, FastVAE):
            raise ValueError(f"finetune.init must be a FastVAE folder, got {type(vae).__name__}")
        init_stats = (vae.config.latents_mean, vae.config.latents_std)  # exported unchanged
        if ft.overrides:
            unknown = set(ft.overrides) - set(vae.config)
            if unknown:
                raise ValueError(f"finetune.overrides: unknown FastVAE config keys {sorted(unknown)}")
            # diffusers' private keys (`_use_default_values`) would reset the overridden ones to their defaults
            base = {k: v for k, v in vae.config.items() if not k.startswith("_")}
            changed = FastVAE.from_config({**base, **ft.overrides})
            changed.load_state_dict(vae.state_dict())  # strict: an override that changes the weights fails here
            vae = changed
    else:
        vae = FastVAE(**cfg["model"])
    if ft.freeze_encoder:
        vae.encoder.requires_grad_(False)
    latent_frames(data.frames, vae.temporal_factor)  # fail early on a bad clip length
    train_ds, val_ds = clip_datasets(data, data.train_length, data.val_length)
    train_ds = VideoOnly(train_ds)
    val_clips = [val_ds[i]["video"].float() for i in range(len(val_ds))]
    stats_clips = [train_ds[i] for i in range(min(ev.stats_clips, len(train_ds)))]
    out = Path(train_cfg.output_dir)
    best_file = out / "best" / "best.json"

    def current_model(trainer: Trainer) -> FastVAE | HybridVAE | None:
        """The EMA (else live) weights as a standalone model on the main process; None elsewhere (collective).
        With `finetune.encoder` it is the HybridVAE the decoder ships in."""
        m = trainer.full_copy("vae", ema=True)
        if m is None:
            return None
        m = m.to(trainer.accelerator.device)
        return HybridVAE(encoder.to(m.device), m) if encoder is not None else m

    def stats_of(m: FastVAE | HybridVAE):
        # a frozen encoder keeps the exact normalisation the downstream models were trained with; a HybridVAE's
        # decoder takes its encoder's normalised latents as they are
        if isinstance(m, HybridVAE):
            return None
        return init_stats if ft.freeze_encoder else latent_stats(m, stats_clips, ev.batch_size)

    def eval_fn(trainer: Trainer) -> dict[str, Any]:
        m = current_model(trainer)
        if m is None:  # scoring and "best" are the main process's job
            return {}
        recon = reconstruct(m, val_clips, ev.batch_size)  # clean: scored for PSNR and the step ratio
        score = clip_psnr(recon, val_clips)
        noisy = evaluate_psnr(m, val_clips, ev.batch_size, ft.eval_noise) if ft.eval_noise else None
        # a noise-trained decoder is judged on clean and noisy latents alike
        select = score if not ft.latent_noise or noisy is None else 0.5 * (score + noisy)
        prev = json.loads(best_file.read_text()) if best_file.is_file() else {}
        best = prev.get("select", prev.get("psnr", -math.inf))  # runs from before `select` kept only psnr
        if trainer.accelerator.is_main_process and select > best:
            export(m, out / "best", stats_of(m))
            best_file.write_text(json.dumps({"psnr": score, "psnr_noisy": noisy, "select": select, "step": trainer.step,
                                             "samples_seen": trainer.samples_seen}))
        trainer.models["vae"].train()
        return {"val_psnr": score, "val_step_ratio": latent_step_ratio(recon, m.temporal_factor),
                **({"val_psnr_noisy": noisy} if noisy is not None else {})}

    trainer = Trainer(train_cfg, {"vae": vae}, make_step_fn(cfg["loss"], ft, encoder), train_ds, eval_fn=eval_fn)
    t0 = time.perf_counter()
    res = trainer.train(resume=args.resume, until=args.until)
    final = current_model(trainer)
    if final is None:
        return res
    export(final, out / "final", stats_of(final))
    reloaded = load_vae(out / "final")
    recon = reconstruct(reloaded, val_clips, ev.batch_size)
    report = {
        "val_psnr": clip_psnr(recon, val_clips),
        **({f"val_psnr_noise{ft.eval_noise:g}": evaluate_psnr(reloaded, val_clips, ev.batch_size, ft.eval_noise)}
           if ft.eval_noise else {}),
        "val_step_ratio": latent_step_ratio(recon, reloaded.temporal_factor),
        "val_step_ratio_clips": latent_step_ratio(torch.stack(val_clips), reloaded.temporal_factor),
        "finetune": vars(ft),
        "best": json.loads(best_file.read_text()) if best_file.is_file() else None,
        "step": trainer.step,
        "samples_seen": trainer.samples_seen,
        "train_elapsed_s": round(trainer.elapsed_s, 1),
        "wall_s_this_run": round(time.perf_counter() - t0, 1),
        "val_clips": len(val_clips),
        "clip": [3, data.frames, data.height, data.width],
        "model": hybrid_config(reloaded) if isinstance(reloaded, HybridVAE) else dict(reloaded.config),
        # what runs per decode: a HybridVAE's trained decoder, not its frozen encoder
        "params": sum(p.numel() for p in (final.decoder.decoder if isinstance(final, HybridVAE) else final).parameters()),
    }
    (out / "eval.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("val_psnr", "step", "samples_seen", "train_elapsed_s")}))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
