"""Pieces shared by the teacher, teacher-forcing and DMD stages.

* config sections `model` / `data` (YAML -> dataclasses through the shared trainer's loader);
* building the networks: a preset (fresh), a local diffusers Wan2.2 directory, or a *stage folder*;
* stage folders: the `StreamingEngine.save` layout (`preset.json`, `transformer/`, `vae/`, `text_encoder/`), so the
  teacher, the students and the shipped demo checkpoint all load the same way;
* the frozen-VAE conditioner (reference / garment images and the clip -> normalised latents);
* the in-context layout `[ref, garment, video]` on the frame axis with t = 0 on the two condition frames.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fashionchameleon.configs import Preset, StreamConfig, get_preset
from fashionchameleon.data.folder import uint8_to_unit
from fashionchameleon.model import CausalWanTransformer3DModel
from fashionchameleon.sampling import FlowMatching
from fashionchameleon.text import LearnedTextEncoder, build_text_encoder
from fashionchameleon.vae import build_vae, latent_frames, load_vae

PRESET_FILE = "preset.json"
STAGE_PARTS = ("transformer", "vae", "text_encoder")
INIT_SCHEMES = ("default", "adaln_zero")


# ------------------------------------------------------------------------------------------------ config sections
@dataclass
class ModelConfig:
    preset: str = "tiny"
    # frozen VAE folder; None builds a fresh random VAE from the preset (smoke runs only: no meaningful latents).
    # With `init`, a given `vae` replaces the stage folder's VAE (a warm start in a new latent space).
    vae: str | None = None
    # local diffusers Wan directory (transformer/, vae/, text_encoder/, tokenizer/); overrides `preset` weights
    pretrained: str | None = None
    # stage folder (teacher or student) to initialise every network from
    init: str | None = None
    seed: int = 0
    gradient_checkpointing: bool = False
    attn_backend: str = "sdpa"  # sdpa | flex | xformers
    train_text_encoder: bool = True  # only the learned demo encoder is trainable; umT5 stays frozen
    # StreamConfig fields replacing the preset's (or the init stage's), e.g. {timestep_shift: 1.0}; the stage
    # folder this run writes carries them, so the students and the streaming engine inherit them
    stream: dict[str, Any] | None = None
    # transformer config fields replacing the preset's, e.g. {attention_head_dim: 64, ffn_dim: 1024}; from-scratch
    # builds only (a stage folder or pretrained directory fixes its own shapes); stored in the stage's preset.json
    transformer: dict[str, Any] | None = None
    # from-scratch weight init: "default" (PyTorch's, as diffusers builds Wan) or "adaln_zero" (every block starts
    # as the identity, DiT's scheme; see CausalWanTransformer3DModel.init_adaln_zero)
    init_scheme: str = "default"
    # training resolution replacing the preset's (or the init stage's), e.g. 480x832 for a Wan2.2 fine-tune at
    # 480p; multiples of the VAE factor times the patch size. The stage folder this run writes carries it.
    height: int | None = None
    width: int | None = None

    def __post_init__(self):
        if self.init_scheme not in INIT_SCHEMES:
            raise ValueError(f"model.init_scheme must be one of {INIT_SCHEMES}, got {self.init_scheme!r}")


CLIP_STARTS = ("first", "random")


@dataclass
class DataConfig:
    source: str = "world"  # world (procedural mannequin world) | folder (meta_data.csv format)
    root: str | None = None  # folder datasets only
    frames: int = 21  # pixel frames per clip, 1 + temporal_factor * k
    # folder data: resample each clip to this frame rate by its timestamps (e.g. 24 for Wan2.2, 16 for Wan2.1),
    # so 25/30/60 fps footage moves at its real speed; None takes the first `frames` frames as they are
    fps: float | None = None
    # folder data: where each clip's window starts. "first": at the clip's start. "random": anywhere the clip
    # allows, drawn anew per row and epoch from (seed, row, epoch), so long clips give many windows and --resume
    # stays exact
    clip_start: str = "first"
    train_length: int = 100_000  # world clips per epoch (rendered on the fly)
    val_length: int = 8
    seed: int = 0
    val_seed: int = 12345
    skip_bad: bool = True
    text_dropout: float = 0.1  # empty prompt this often (classifier-free guidance)
    loss_weighting: str = "bell"  # bell (paper) | uniform (from-scratch CPU demo, see per_frame_bell_mse)
    # Extra loss weight on the upper-garment region (needs gt masks: world, or folder rows with a gt sidecar).
    # The reference differs from the clip only there, so without it "copy the reference" is a near-optimal
    # shortcut that a small model trained briefly never leaves (see docs/TRAINING.md).
    garment_loss_weight: float = 0.0
    # Extra loss weight on the whole person (every gt label but background), on top of the garment's. The figure
    # covers a small share of the frame, and every teacher so far keeps the scene while the body fades (run 8).
    body_loss_weight: float = 0.0
    # Training clips pre-encoded by the frozen VAE (`python -m teacher.cache_latents`), read instead of rendering
    # and encoding `source` at every step (teacher and teacher forcing). Held-out samples still come from `source`.
    # A list reads several caches as one (e.g. caches built in different sessions from different data seeds).
    latent_cache: str | list[str] | None = None

    def __post_init__(self):
        if self.source not in ("world", "folder"):
            raise ValueError(f"data.source must be 'world' or 'folder', got {self.source!r}")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ValueError(f"text_dropout must be in [0, 1], got {self.text_dropout}")
        for name in ("garment_loss_weight", "body_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.clip_start not in CLIP_STARTS:
            raise ValueError(f"data.clip_start must be one of {CLIP_STARTS}, got {self.clip_start!r}")
        if self.clip_start != "first" and self.source != "folder":
            raise ValueError("data.clip_start places windows in folder videos; the world renders each clip whole")
        if self.fps is not None:
            if self.source != "folder":
                raise ValueError("data.fps resamples folder videos; the world renders at its own rate "
                                 "(set it only with data.source: folder)")
            if not self.fps > 0:
                raise ValueError(f"data.fps must be > 0, got {self.fps}")


# ------------------------------------------------------------------------------------------------ components
@dataclass
class Components:
    preset: Preset
    transformer: CausalWanTransformer3DModel
    vae: Any
    text_encoder: torch.nn.Module

    @property
    def fm(self) -> FlowMatching:
        s = self.preset.stream
        return FlowMatching(s.num_train_timesteps, s.timestep_shift)

    def place(self, device, frozen_dtype: torch.dtype | None = None) -> "Components":
        """Move the frozen VAE and text encoder to the trainer's device (the trainer only moves what it holds).
        `frozen_dtype` (the trainer's) is applied to a frozen text encoder that stage folders reference by path
        (umT5: 23 GB in fp32, 11 GB in bf16); the VAE stays fp32, and an encoder that is saved with the stage
        (the learned one) keeps its weights exact."""
        self.vae.to(device)
        if isinstance(self.text_encoder, torch.nn.Module):
            frozen = not any(p.requires_grad for p in self.text_encoder.parameters())
            by_path = not hasattr(self.text_encoder, "save_pretrained")
            self.text_encoder.to(device)
            if frozen and by_path and frozen_dtype is not None:
                self.text_encoder.to(frozen_dtype)
        return self


def _require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {p} (set it in the YAML config; nothing is downloaded)")
    return p


def read_stage_preset(path: str | os.PathLike) -> tuple[Path, Preset]:
    """A stage folder and its preset.json, or a clear error when `path` is not one."""
    p = _require_dir(path, "stage checkpoint")
    pfile = p / PRESET_FILE
    if not pfile.is_file():
        raise FileNotFoundError(f"{p} is not a stage checkpoint (missing {PRESET_FILE})")
    return p, Preset.from_dict(json.loads(pfile.read_text()))


def load_stage(path: str | os.PathLike) -> Components:
    """Load a stage folder written by `save_stage` / `StreamingEngine.save` (weights stay trainable)."""
    p, preset = read_stage_preset(path)
    transformer = CausalWanTransformer3DModel.from_pretrained(p / "transformer", use_safetensors=True)
    transformer = transformer.float()  # exports may be fp16 to save space; training runs in fp32 masters
    vae = load_vae(p / "vae").float()
    tdir = p / "text_encoder"
    text = build_text_encoder(preset.text, tdir if tdir.is_dir() else preset.text.get("path")).float()
    return Components(preset, transformer, vae, text)


def stage_from_trainer_export(export_dir: str | os.PathLike, like: str | os.PathLike,
                              dest: str | os.PathLike, half: bool = False) -> Path:
    """Turn a trainer export of a `TextDiT` (`step_*/teacher_ema/` folder, or a weights file such as
    `step_*/ema_teacher_rank0.safetensors`) into a stage folder, taking the preset / VAE / architecture from
    stage folder `like`."""
    from safetensors.torch import load_file

    comp = load_stage(like)
    src = Path(export_dir)
    sd = load_file(str(src if src.is_file() else src / "model.safetensors"))
    for prefix, module in (("transformer.", comp.transformer), ("text_encoder.", comp.text_encoder)):
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if part:
            module.load_state_dict(part, strict=True)
    return save_stage(dest, comp, half=half)


def save_stage(path: str | os.PathLike, comp: Components, card: str | None = None,
               half: bool = False, private: tuple[str, ...] = ()) -> Path:
    """Same layout as `StreamingEngine.save`; `half` stores fp16 weights (the loaders cast back to fp32).
    Parts named in `private` are CPU copies the caller owns: they are written (and halved) in place, not copied."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / PRESET_FILE).write_text(json.dumps(comp.preset.to_dict(), indent=2))
    for name in STAGE_PARTS:
        m = getattr(comp, name)
        if not hasattr(m, "save_pretrained"):
            continue  # umT5 is referenced by path, not copied
        if name not in private:
            m = copy.deepcopy(m).cpu()
        if half:
            m = m.half()
        m.save_pretrained(tmp / name, safe_serialization=True)
    if card:
        (tmp / "README.md").write_text(card)
    # atomic-ish replace so a reader never sees a half-written folder
    if p.exists():
        old = p.with_name(p.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        p.rename(old)
        tmp.rename(p)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(p)
    return p


def build_components(cfg: ModelConfig) -> Components:
    """Networks for a stage: from `init` (a stage folder), `pretrained` (diffusers Wan dir) or the preset."""
    if cfg.transformer and (cfg.init or cfg.pretrained):
        raise ValueError("model.transformer overrides apply to from-scratch builds only; the weights in "
                         f"{cfg.init or cfg.pretrained} fix the transformer's shapes")
    if cfg.init_scheme != "default" and (cfg.init or cfg.pretrained):
        raise ValueError(f"model.init_scheme={cfg.init_scheme!r} applies to from-scratch builds only; "
                         f"{cfg.init or cfg.pretrained} brings its own weights")
    if cfg.init:
        comp = load_stage(cfg.init)
        if cfg.vae:
            # warm start in a new latent space: the transformer re-adapts, the new VAE is frozen from here on
            comp.vae = load_vae(_require_dir(cfg.vae, "VAE (model.vae)")).float()
    elif cfg.pretrained:
        from fashionchameleon.text import UMT5TextEncoder
        from fashionchameleon.vae import WanVAE

        root = _require_dir(cfg.pretrained, "pretrained Wan (model.pretrained)")
        preset = get_preset(cfg.preset)
        transformer = CausalWanTransformer3DModel.from_pretrained(_require_dir(root / "transformer", "transformer"))
        vae = WanVAE.from_pretrained(_require_dir(root / "vae", "vae"))
        text = UMT5TextEncoder.from_pretrained(root, preset.text.get("max_length", 512))
        sync_preset_to_pretrained(preset, transformer, vae, text, root)
        comp = Components(preset, transformer, vae, text)
    else:
        preset = get_preset(cfg.preset)
        if cfg.transformer:
            allowed = set(inspect.signature(CausalWanTransformer3DModel.__init__).parameters) - {"self"}
            unknown = set(cfg.transformer) - allowed
            if unknown:
                raise ValueError(f"unknown model.transformer keys {sorted(unknown)}; allowed: {sorted(allowed)}")
            preset.transformer = {**preset.transformer, **cfg.transformer}
        torch.manual_seed(cfg.seed)
        transformer = CausalWanTransformer3DModel(**preset.transformer)
        if cfg.init_scheme == "adaln_zero":
            transformer.init_adaln_zero()
        if cfg.vae:
            vae = load_vae(_require_dir(cfg.vae, "VAE (model.vae)")).float()
        else:
            vae = build_vae(preset.vae)
        text = build_text_encoder(preset.text)
        comp = Components(preset, transformer, vae, text)
    if cfg.stream:
        comp.preset.stream = StreamConfig.from_dict({**asdict(comp.preset.stream), **cfg.stream})
    apply_size(comp.preset, cfg)
    comp.vae.eval().requires_grad_(False)
    trainable_text = cfg.train_text_encoder and isinstance(comp.text_encoder, LearnedTextEncoder)
    comp.text_encoder.requires_grad_(trainable_text)
    comp.transformer.set_attn_backend(cfg.attn_backend)
    if cfg.gradient_checkpointing:
        comp.transformer.enable_gradient_checkpointing()
    return comp


def apply_size(preset: Preset, cfg: ModelConfig) -> Preset:
    """`model.height` / `model.width` override the preset's training size."""
    if cfg.height or cfg.width:
        from fashionchameleon.configs import check_resolution

        preset.height = cfg.height or preset.height
        preset.width = cfg.width or preset.width
        check_resolution(preset)
    return preset


def wan_vae_preset(vae) -> dict:
    """The preset's `vae` section that describes a loaded diffusers Wan VAE."""
    return {"backend": "wan", **{k: v for k, v in vae.config.items() if not k.startswith("_")},
            "scale_factor_spatial": vae.spatial_factor, "scale_factor_temporal": vae.temporal_factor}


def build_stage_vae(cfg: ModelConfig) -> tuple[Preset, torch.nn.Module]:
    """The frozen VAE and the preset (size, VAE factors) that `build_components(cfg)` would give, without building
    the transformer: all a latent cache needs. Loading a 5B transformer only to drop it costs minutes and tens of
    GB. Only a random (untrained) VAE still takes the full build, because its weights depend on the draws before it."""
    if cfg.init:
        root, preset = read_stage_preset(cfg.init)
        vae = load_vae(_require_dir(cfg.vae, "VAE (model.vae)") if cfg.vae else root / "vae")
    elif cfg.pretrained:
        from fashionchameleon.vae import WanVAE

        root = _require_dir(cfg.pretrained, "pretrained Wan (model.pretrained)")
        preset = get_preset(cfg.preset)
        vae = WanVAE.from_pretrained(_require_dir(root / "vae", "vae"))
        preset.vae = wan_vae_preset(vae)
    elif cfg.vae:
        preset = get_preset(cfg.preset)
        vae = load_vae(_require_dir(cfg.vae, "VAE (model.vae)"))
    else:
        comp = build_components(cfg)
        return comp.preset, comp.vae
    vae = vae.float().eval().requires_grad_(False)
    return apply_size(preset, cfg), vae


def sync_preset_to_pretrained(preset: Preset, transformer, vae, text, root: Path) -> Preset:
    """Make the preset describe the loaded directory, not the preset's defaults: the stage folder's preset.json
    (token counts, VAE factors, FLOPs, random-weight rebuilds) must match the weights it sits beside. Fails
    clearly when the parts do not fit together (e.g. a Wan2.1 transformer beside a Wan2.2 VAE)."""
    tcfg = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    if tcfg["in_channels"] != vae.z_dim:
        raise ValueError(f"{root}: transformer in_channels={tcfg['in_channels']} but the VAE has z_dim={vae.z_dim}")
    text_dim = int(text.encoder.config.d_model)
    if tcfg["text_dim"] != text_dim:
        raise ValueError(f"{root}: transformer text_dim={tcfg['text_dim']} but the text encoder's d_model={text_dim}")
    preset.transformer = tcfg
    preset.vae = wan_vae_preset(vae)
    preset.text = {**preset.text, "kind": "umt5", "dim": text_dim, "path": str(root)}
    return preset


# ------------------------------------------------------------------------------------------------ data
def build_dataset(data: DataConfig, preset: Preset, split: str, length: int, seed: int):
    size = (preset.height, preset.width)
    latent_frames(data.frames, preset.temporal_factor)  # fail early on a bad clip length
    if data.source == "world":
        from fashionchameleon.data import WorldDataset

        return WorldDataset(split=split, size=size, frames=data.frames, length=length, seed=seed,
                            garment_masks=data.garment_loss_weight > 0, body_masks=data.body_loss_weight > 0)
    from fashionchameleon.data import FolderDataset

    root = _require_dir(data.root or "", "data.root (real-data folder with meta_data.csv)")
    return FolderDataset(root, size=size, frames=data.frames, skip_bad=data.skip_bad,
                         garment_masks=data.garment_loss_weight > 0, body_masks=data.body_loss_weight > 0,
                         fps=data.fps, clip_start=data.clip_start, seed=seed)


def training_dataset(data: DataConfig, comp: "Components", length: int, seed: int):
    """The stage's training clips: the latent cache(s) `data.latent_cache` (each checked against the stage's VAE,
    clip length, size and loss masks), else `source` rendered or read per step."""
    if not data.latent_cache:
        return Triplets(build_dataset(data, comp.preset, "train", length, seed))
    from fashionchameleon.data.latent_cache import LatentCache, LatentCacheError, module_fingerprint

    roots = [data.latent_cache] if isinstance(data.latent_cache, str) else list(data.latent_cache)
    needed = tuple(COVERAGE_OF_MASK[k] for k, w in (("garment_mask", data.garment_loss_weight),
                                                   ("body_mask", data.body_loss_weight)) if w > 0)
    fingerprint = module_fingerprint(comp.vae)
    caches = []
    for root in roots:
        cache = LatentCache(root)
        cache.check(vae_fingerprint=fingerprint, frames=data.frames, height=comp.preset.height,
                    width=comp.preset.width, coverage=needed)
        caches.append(cache)
    if len(caches) == 1:
        return caches[0]
    if len({c.keys for c in caches}) > 1:  # a batch mixing them would not collate
        raise LatentCacheError("latent caches hold different tensors: " + "; ".join(
            f"{c.root}: {list(c.keys)}" for c in caches) + ". Build them with the same loss masks.")
    return torch.utils.data.ConcatDataset(caches)


MASK_KEYS = ("garment_mask", "body_mask")
KEEP_KEYS = ("reference", "garment", "video", "prompt") + MASK_KEYS


PIXEL_KEYS = ("reference", "garment", "video")


def pack_pixels(item: dict) -> dict:
    """Images in [-1, 1] and masks in [0, 1] -> uint8, a quarter of the bytes the data workers ship to the trainer.

    Exact for data that came from 8-bit images (`image_to_tensor`, PNG masks): `pixels` / `mask_values` give back
    bit-identical float32 tensors. The GPU run of docs/TRAINING.md (run 5) spent 2/3 of each step waiting on fp32
    batches."""
    out = dict(item)
    for k in PIXEL_KEYS:
        if k in out and out[k].is_floating_point():
            out[k] = out[k].add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
    for k in MASK_KEYS:
        if k in out and out[k].is_floating_point():
            out[k] = out[k].mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


def pixels(x: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
    """A batch entry of `pack_pixels` (or a float one) -> [-1, 1] on `device` in `dtype`, converted there."""
    if x.dtype == torch.uint8:
        return uint8_to_unit(x.to(device)).to(dtype)
    return x.to(device, dtype)


def mask_values(m: torch.Tensor) -> torch.Tensor:
    return m.float().div_(255.0) if m.dtype == torch.uint8 else m.float()


class Triplets(torch.utils.data.Dataset):
    """Keep the entries the stages use (datasets may return extra ground truth), as uint8: rendered that way by
    datasets that can (`uint8` attribute: no float round trip), else packed."""

    def __init__(self, ds):
        if hasattr(ds, "uint8"):
            ds.uint8 = True
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def epoch_indexed(self) -> bool:  # see trainer.EpochSampler
        return bool(getattr(self.ds, "epoch_indexed", False))

    def __getitem__(self, i: int) -> dict:
        d = self.ds[i]
        return pack_pixels({k: d[k] for k in KEEP_KEYS if k in d})


def latent_region_weight(mask: torch.Tensor | None, latent_shape, temporal_factor: int,
                         extra: float) -> torch.Tensor | None:
    """Pixel masks `[B, T, H, W]` -> loss weights `1 + extra * coverage`, shaped `[B, 1, f, h, w]` (see
    `latent_coverage`)."""
    if mask is None or extra == 0:
        return None
    return 1.0 + extra * latent_coverage(mask, latent_shape, temporal_factor)


def latent_coverage(mask: torch.Tensor, latent_shape, temporal_factor: int) -> torch.Tensor:
    """Pixel masks `[B, T, H, W]` -> the area each latent cell covers, `[B, 1, f, h, w]` in [0, 1].

    Latent frame 0 holds pixel frame 0 and latent frame k the `temporal_factor` frames before 1 + k * factor
    (the causal VAE's grouping); a latent cell's coverage is the max over its frames of the area fraction.
    """
    f, h, w = latent_shape[-3:]
    m = mask_values(mask)
    if m.shape[1] != 1 + (f - 1) * temporal_factor:
        raise ValueError(f"region mask has {m.shape[1]} frames, the clip's latents need "
                         f"{1 + (f - 1) * temporal_factor}")
    area = torch.nn.functional.adaptive_avg_pool2d(m, (h, w))  # [B, T, h, w]
    first, rest = area[:, :1], area[:, 1:]
    if f > 1:
        rest = rest.reshape(m.shape[0], f - 1, temporal_factor, h, w).amax(dim=2)
        area = torch.cat([first, rest], dim=1)
    return area.unsqueeze(1)


# pixel mask -> its latent coverage as a latent cache stores it
COVERAGE_OF_MASK = {"garment_mask": "garment_cov", "body_mask": "body_cov"}


def region_loss_weight(batch: dict, latent_shape, temporal_factor: int, data: DataConfig) -> torch.Tensor | None:
    """`1 + garment_loss_weight * garment coverage + body_loss_weight * body coverage` per latent cell, or None
    when neither weight is on (see `latent_region_weight`). A latent-cache batch brings the coverage itself."""
    terms = []
    for key, w in (("garment_mask", data.garment_loss_weight), ("body_mask", data.body_loss_weight)):
        cov = batch.get(COVERAGE_OF_MASK[key])
        if cov is not None and w:
            terms.append(1.0 + w * cov.float())
        else:
            terms.append(latent_region_weight(batch.get(key), latent_shape, temporal_factor, w))
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    return sum(terms) - (len(terms) - 1)  # each term is 1 + extra * coverage


# ------------------------------------------------------------------------------------------------ conditioning
@torch.no_grad()
def encode_batch(vae, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ref [B,z,1,h,w], garment [B,z,1,h,w], video [B,z,f,h,w]) normalised latents from the frozen VAE, or as a
    latent-cache batch brings them (`*_latent` keys)."""
    if "video_latent" in batch:
        return tuple(batch[f"{k}_latent"].to(device, torch.float32) for k in ("reference", "garment", "video"))
    dt = next(vae.parameters()).dtype
    ref = vae.encode_image(pixels(batch["reference"], device, dt)).float()
    gar = vae.encode_image(pixels(batch["garment"], device, dt)).float()
    vid = vae.encode_video(pixels(batch["video"], device, dt)).float()
    return ref, gar, vid


def drop_prompts(prompts: list[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each prompt by "" with probability p (the CFG null condition)."""
    keep = torch.rand(len(prompts), generator=generator) >= p
    return [s if k else "" for s, k in zip(prompts, keep.tolist())]


def incontext_timesteps(t_video: torch.Tensor, cond_frames: int) -> torch.Tensor:
    """`t_video [B]` or `[B, f]` -> per-frame `[B, cond + f]` with t = 0 on the condition frames."""
    if t_video.ndim == 1:
        raise ValueError("pass per-frame timesteps [B, f]")
    zeros = t_video.new_zeros(t_video.shape[0], cond_frames)
    return torch.cat([zeros, t_video], dim=1)


def incontext_flow(transformer, ref: torch.Tensor, gar: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   text: torch.Tensor) -> torch.Tensor:
    """Bidirectional flow prediction for the video frames of `[ref, garment, x_t]` (outputs at conds dropped).

    `t` is `[B]` (shared by the video frames) or `[B, f]`.
    """
    f = x_t.shape[2]
    if t.ndim == 1:
        t = t[:, None].expand(-1, f)
    cond = ref.shape[2] + gar.shape[2]
    x = torch.cat([ref, gar, x_t], dim=2).to(x_t.dtype)
    out = transformer(x, incontext_timesteps(t.float(), cond), text, attention_mode="bidirectional").sample
    return out[:, :, cond:]


def cfg_flow(transformer, ref, gar, x_t, t, text_c, text_u, scale: float) -> torch.Tensor:
    """Classifier-free guided flow: v_u + s (v_c - v_u); one batched forward for both branches."""
    if scale == 1.0:
        return incontext_flow(transformer, ref, gar, x_t, t, text_c)
    b = x_t.shape[0]
    two = lambda z: torch.cat([z, z], dim=0)  # noqa: E731
    v = incontext_flow(transformer, two(ref), two(gar), two(x_t), two(t), torch.cat([text_c, text_u], dim=0))
    v_c, v_u = v[:b], v[b:]
    return v_u + scale * (v_c - v_u)


@torch.no_grad()
def blank_garment_latent(vae, garment: torch.Tensor) -> torch.Tensor:
    """Latents of empty product images (all white: the letterbox canvas) shaped like `garment` pixels; the null
    condition of garment guidance."""
    return vae.encode_image(torch.ones_like(garment)).float()


def garment_guided_flow(transformer, ref, gar, gar_null, x_t, t, text_c, text_u, text_scale: float,
                        garment_scale: float) -> torch.Tensor:
    """Text CFG plus garment guidance, one batched forward over (text, garment), (no text, garment) and
    (text, blank garment): `v_u + s_t (v_c - v_u) + (s_g - 1) (v_c - v_blank)`. Used by the DMD real score and
    by `teacher.sample --garment-guidance`."""
    b = x_t.shape[0]
    three = lambda z: torch.cat([z, z, z], dim=0)  # noqa: E731
    v = incontext_flow(transformer, three(ref), torch.cat([gar, gar, gar_null], dim=0), three(x_t), three(t),
                       torch.cat([text_c, text_u, text_c], dim=0))
    v_c, v_u, v_n = v[:b], v[b:2 * b], v[2 * b:]
    return v_u + text_scale * (v_c - v_u) + (garment_scale - 1.0) * (v_c - v_n)


LOSS_WEIGHTINGS = ("bell", "uniform")


def per_frame_bell_mse(fm: FlowMatching, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                       weighting: str = "bell", region: torch.Tensor | None = None) -> torch.Tensor:
    """Flow-matching MSE, bell-weighted per frame (paper) or unweighted; `t` `[B]` or `[B, f]`.

    The bell weight is ~0 near t = 1000: fine when fine-tuning a pretrained video model (the paper), but a model
    trained from scratch then never learns the high-noise regime where sampling (and the 4-step student) starts,
    so the CPU demo configs use "uniform". `region` `[B, 1, f, h, w]` (`latent_region_weight`) turns each
    frame's spatial mean into a weighted mean.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    err = (pred.float() - target.float()).pow(2).mean(dim=1)  # [B, f, h, w]
    if region is None:
        err = err.mean(dim=(2, 3))  # [B, f]
    else:
        r = region[:, 0].to(err)
        err = (r * err).sum(dim=(2, 3)) / r.sum(dim=(2, 3))
    if weighting == "uniform":
        return err.mean()
    if t.ndim == 1:
        t = t[:, None].expand_as(err)
    return (fm.bell_weight(t) * err).mean()


def frames_for_chunks(preset: Preset, chunks: int) -> int:
    """Pixel frames of a clip with `chunks` streaming chunks."""
    return preset.pixel_frames(chunks * preset.stream.chunk_frames)


def read_log(path: str | os.PathLike) -> list[dict[str, str]]:
    import csv

    p = Path(path)
    if not p.is_file():
        return []
    with p.open() as fh:
        return list(csv.DictReader(fh))


def plot_curves(log_csv: str | os.PathLike, keys: list[str], dest: str | os.PathLike, title: str,
                smooth: int = 10, size: tuple[int, int] = (360, 640)) -> Path | None:
    """Loss curves (log-y, moving average over `smooth` rows) from a trainer log.csv, drawn with OpenCV."""
    import cv2
    import numpy as np

    rows = read_log(log_csv)
    series = {}
    for k in keys:
        pts = [(int(r["step"]), float(r[k])) for r in rows if r.get(k) not in (None, "", "nan")]
        pts = [(s, v) for s, v in pts if v > 0 and np.isfinite(v)]
        if pts:
            s, v = map(np.asarray, zip(*pts))
            if len(v) >= smooth:
                v = np.convolve(v, np.ones(smooth) / smooth, mode="valid")
                s = s[smooth - 1:]
            series[k] = (s, np.log10(v))
    if not series:
        return None
    h, w = size
    margin = 50
    img = np.full((h, w, 3), 255, np.uint8)
    smin = min(s.min() for s, _ in series.values())
    smax = max(max(s.max() for s, _ in series.values()), smin + 1)
    vmin = min(v.min() for _, v in series.values())
    vmax = max(max(v.max() for _, v in series.values()), vmin + 1e-3)
    cv2.rectangle(img, (margin, 20), (w - 10, h - margin), (0, 0, 0), 1)
    colours = [(200, 80, 30), (30, 120, 220), (40, 160, 40), (160, 40, 160)]

    def xy(s, v):
        x = margin + (s - smin) / (smax - smin) * (w - 10 - margin)
        y = h - margin - (v - vmin) / (vmax - vmin) * (h - margin - 20)
        return np.stack([x, y], 1).astype(np.int32)

    for i, (k, (s, v)) in enumerate(series.items()):
        c = colours[i % len(colours)]
        cv2.polylines(img, [xy(s, v)], False, c, 1, cv2.LINE_AA)
        cv2.putText(img, f"{k} (avg{smooth}) last={10 ** v[-1]:.4g}", (margin + 5, 35 + 15 * i),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, c, 1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (margin, 14), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{10 ** vmax:.3g}", (2, 28), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{10 ** vmin:.3g}", (2, h - margin), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"step {smin}", (margin, h - margin + 15), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"step {smax}", (w - 90, h - margin + 15), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "log10 scale", (w // 2 - 30, h - 12), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dest), img[:, :, ::-1])
    return dest


# ------------------------------------------------------------------------------------------------ trainable wrapper
class TextDiT(torch.nn.Module):
    """Transformer + (optionally trainable) learned text encoder as one module: one optimizer, one EMA."""

    def __init__(self, transformer: CausalWanTransformer3DModel, text_encoder: torch.nn.Module | None):
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder  # None: a frozen external encoder (umT5) supplies the embeddings

    def encode(self, prompts: list[str], frozen: torch.nn.Module | None = None) -> torch.Tensor:
        enc = self.text_encoder if self.text_encoder is not None else frozen
        dev = next(self.transformer.parameters()).device
        return enc(list(prompts)).to(dev)

    def forward(self, *args, prompts: list[str] | None = None, frozen_text: torch.nn.Module | None = None,
                **kwargs):
        """The one entry point a DDP/FSDP wrapper sees: `prompts=` encodes text, anything else is a transformer
        call. Step functions reach it through `routed`."""
        if prompts is not None:
            return self.encode(prompts, frozen_text)
        return self.transformer(*args, **kwargs)

    def fresh(self) -> "TextDiT":
        """Same architecture, new parameters (for `Trainer.full_copy`)."""
        from fashionchameleon.trainer import fresh_module

        te = fresh_module(self.text_encoder) if self.text_encoder is not None else None
        return TextDiT(fresh_module(self.transformer), te)


class _RoutedTransformer:
    """Calls go through the outer wrapper's forward; attributes (config, caches, parameters) come from the
    transformer itself."""

    def __init__(self, outer: torch.nn.Module, inner: torch.nn.Module):
        self._outer, self._inner = outer, inner

    def __call__(self, *args, **kwargs):
        return self._outer(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class Routed:
    """A prepared `TextDiT` as a step function uses it (`.transformer(...)`, `.encode(...)`), with every call made
    through the DDP/FSDP wrapper: DDP syncs gradients only of calls made through its forward, FSDP gathers the
    root's shards only there, and accelerate's mixed-precision autocast sits on that forward too."""

    def __init__(self, model: torch.nn.Module, accelerator):
        inner = accelerator.unwrap_model(model)
        if not isinstance(inner, TextDiT):
            raise TypeError(f"routed() expects a prepared TextDiT, got {type(inner).__name__}")
        self._outer = model
        # routed even in one process: accelerate puts autocast (and fp32 outputs) on the prepared model's forward
        self.transformer = _RoutedTransformer(model, inner.transformer)

    def encode(self, prompts: list[str], frozen: torch.nn.Module | None = None) -> torch.Tensor:
        return self._outer(prompts=list(prompts), frozen_text=frozen)


def routed(ctx, name: str) -> Routed:
    """`ctx.models[name]` (a prepared `TextDiT`) for use inside a step function."""
    return Routed(ctx.models[name], ctx.accelerator)


def wrap(comp: Components, trainable: bool = True) -> TextDiT:
    te = comp.text_encoder if any(p.requires_grad for p in comp.text_encoder.parameters()) else None
    m = TextDiT(comp.transformer, te)
    if not trainable:
        m.requires_grad_(False).eval()
    return m


def export_stage(trainer, name: str, comp: Components, dest: str | os.PathLike, card: str | None = None,
                 ema: bool = True, half: bool = False) -> Path:
    """Write model `name` (a `TextDiT`, EMA weights if tracked) as a stage folder with the frozen VAE.
    Collective: call it on every process (FSDP gathers the full weights); the main process writes."""
    full = trainer.full_copy(name, ema=ema)
    if full is not None:
        own_text = full.text_encoder is not None  # else the shared frozen encoder, which save_stage must copy
        out = Components(comp.preset, full.transformer, comp.vae, full.text_encoder if own_text else comp.text_encoder)
        private = ("transformer", "text_encoder") if own_text else ("transformer",)
        save_stage(dest, out, card, half=half, private=private)
    trainer.accelerator.wait_for_everyone()
    return Path(dest)


# ------------------------------------------------------------------------------------------------ stage entry points
def stage_parser(description: str, init_help: str | None = "stage folder to start from (overrides model.init)"):
    """The command line every training stage shares; stages add their own extra flags (no --init if
    `init_help` is None)."""
    import argparse

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny run using the config's smoke section")
    ap.add_argument("--resume", action="store_true", help="continue from the latest step_* checkpoint")
    ap.add_argument("--out", help="output directory (overrides train.output_dir)")
    ap.add_argument("--max-steps", type=int, help="overrides train.max_steps")
    ap.add_argument("--until", type=int, help="stop (and checkpoint) at this step without changing the schedule")
    if init_help is not None:
        ap.add_argument("--init", help=init_help)
    ap.add_argument("--threads", type=int, help="CPU threads (overrides train.num_threads)")
    ap.add_argument("--max-minutes", type=float, help="stop after this much wall time (overrides train.max_minutes)")
    ap.add_argument("--batch-size", type=int, help="overrides train.batch_size")
    ap.add_argument("--workers", type=int, help="data-loader worker processes (overrides train.num_workers)")
    ap.add_argument("--data-echo", type=int, help="reuse each loaded batch this many times (overrides "
                                                  "train.data_echo; for a data-bound GPU run)")
    ap.add_argument("--lr", type=float, help="overrides train.lr")
    ap.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"],
                    help="overrides train.mixed_precision (auto: bf16 on CUDA, none on CPU)")
    ap.add_argument("--latent-cache", nargs="+", help="pre-encoded training clips, one or more caches read as one "
                                                      "(overrides data.latent_cache; build them with "
                                                      "`python -m teacher.cache_latents`)")
    return ap


def apply_overrides(args, train_cfg, data: DataConfig, smoke) -> tuple[Any, DataConfig]:
    """Apply --smoke / --max-steps / --out / --threads / --latent-cache to the train and data sections; set the CPU
    threads."""
    from fashionchameleon.trainer import apply_cli_overrides, dataclass_from_dict

    if args.smoke:
        data = dataclass_from_dict(DataConfig, {**vars(data), "train_length": smoke.train_length})
    if getattr(args, "latent_cache", None):
        caches = [args.latent_cache] if isinstance(args.latent_cache, str) else list(args.latent_cache)
        data = dataclass_from_dict(DataConfig, {**vars(data), "latent_cache": caches[0] if len(caches) == 1
                                                else caches})
    train_cfg = apply_cli_overrides(train_cfg, smoke if args.smoke else None, args.max_steps, args.out, args.threads,
                                    getattr(args, "max_minutes", None), getattr(args, "batch_size", None),
                                    getattr(args, "workers", None), getattr(args, "data_echo", None),
                                    getattr(args, "lr", None), getattr(args, "mixed_precision", None))
    return train_cfg, data


def finish_stage(trainer, res: dict, name: str, comp: Components, out: Path, card: str, keys: tuple[str, ...]):
    """Export the final stage folder (collective: every process calls it) and the run summary (main process)."""
    export_stage(trainer, name, comp, out / "final", card)
    if not trainer.accelerator.is_main_process:
        return
    (out / "result.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: res[k] for k in keys if k in res}))
