"""Video VAEs behind one interface: `WanVAE` (diffusers `AutoencoderKLWan`) and `FastVAE` (the CPU demo backend).

Both expose
    encode_image(x [B,3,H,W] in [-1,1]) -> [B,z,1,h,w]        normalised latents (z - mean) / std
    encode_video(x [B,3,T,H,W])         -> [B,z,1+(T-1)/tf,h,w] (T must be 1 + tf*k)
    decode(z [B,z,f,h,w])               -> [B,3,1+tf*(f-1),H,W] in [-1,1]
    stream_decoder()                    -> object with .decode(chunk) / .reset(); chunked output == one-shot decode
    z_dim, spatial_factor, temporal_factor, latents_mean, latents_std

Frame rule (Wan causal VAE): latent 0 <- pixel frame 0 alone; latent i > 0 <- pixel frames tf*(i-1)+1 .. tf*i.
`HybridVAE` pairs one VAE's encoder with a FastVAE decoder trained on that VAE's latents (`teacher/train_vae.py`,
`finetune.encoder`): the latent space stays the one the DiT was trained in, and the per-chunk decode gets cheap.
`load_vae(dir)` picks the class from `config.json`'s `_class_name`; `build_vae({"backend": ..., **kwargs})` builds a
fresh (random) one from a preset dict.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
from diffusers.models.modeling_utils import ModelMixin

__all__ = ["WanVAE", "FastVAE", "HybridVAE", "decoder_fields", "load_vae", "build_vae", "check_vae_dir", "latent_frames", "pixel_frames"]


def latent_frames(num_frames: int, temporal_factor: int) -> int:
    """Latent frame count for `num_frames` pixel frames; raises unless num_frames = 1 + tf*k."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(
            f"video has {num_frames} frames; the causal VAE needs T = 1 + {temporal_factor}*k "
            f"(e.g. 1, {1 + temporal_factor}, {1 + 2 * temporal_factor}) frames"
        )
    return 1 + (num_frames - 1) // temporal_factor


def pixel_frames(num_latents: int, temporal_factor: int) -> int:
    return 1 + temporal_factor * (num_latents - 1) if num_latents > 0 else 0


def check_vae_dir(path: str | os.PathLike) -> Path:
    """Validate a diffusers-style model folder: exists, has config.json and safetensors weights only."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"VAE directory not found: {p}")
    if not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file():
        p = p / "vae"  # a diffusers pipeline folder
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in VAE directory {p}")
    if _class_name(p) == "HybridVAE":
        for part in HybridVAE.PARTS:
            check_vae_dir(p / part)
        return p
    if not any(p.glob("*.safetensors")):
        others = sorted(f.name for f in p.iterdir() if f.suffix in {".bin", ".pt", ".pth", ".ckpt"})
        if others:
            raise ValueError(f"{p} holds only non-safetensors weights {others}; convert them to .safetensors")
        raise FileNotFoundError(f"no *.safetensors weights in VAE directory {p}")
    return p


def _class_name(p: Path) -> str | None:
    try:
        return json.loads((p / "config.json").read_text()).get("_class_name")
    except json.JSONDecodeError as e:
        raise ValueError(f"{p / 'config.json'} is not valid JSON: {e}") from e


def _as_channel_tensor(value: float | Sequence[float], z_dim: int, name: str, ref: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=ref.dtype, device=ref.device).flatten()
    if t.numel() == 1:
        t = t.expand(z_dim)
    if t.numel() != z_dim:
        raise ValueError(f"{name} has {t.numel()} entries but z_dim is {z_dim}")
    return t.view(1, z_dim, 1, 1, 1)


def _outside_autocast(fn):
    """Frozen-VAE calls run in the VAE's own dtype even inside a training step's autocast: its latents are the
    training targets, and the trainer autocasts the whole step (fashionchameleon/trainer.py)."""

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with torch.autocast(self.device.type, enabled=False):
            return fn(self, *args, **kwargs)

    return run


class _LatentNormMixin:
    """Shared (z - mean) / std handling; subclasses provide z_dim, latents_mean, latents_std."""

    z_dim: int

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean = _as_channel_tensor(self.latents_mean, self.z_dim, "latents_mean", z)
        std = _as_channel_tensor(self.latents_std, self.z_dim, "latents_std", z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean = _as_channel_tensor(self.latents_mean, self.z_dim, "latents_mean", z)
        std = _as_channel_tensor(self.latents_std, self.z_dim, "latents_std", z)
        return z * std + mean

    def _check_video(self, x: torch.Tensor) -> int:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected video [B,3,T,H,W], got {tuple(x.shape)}")
        s = self.spatial_factor
        if x.shape[-2] % s or x.shape[-1] % s:
            raise ValueError(f"H, W = {tuple(x.shape[-2:])} must be multiples of the VAE spatial factor {s}")
        return latent_frames(x.shape[2], self.temporal_factor)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            raise ValueError(f"expected latent [B,{self.z_dim},f,h,w], got {tuple(z.shape)}")

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected image [B,3,H,W], got {tuple(x.shape)}")
        return self.encode_video(x.unsqueeze(2))


# --------------------------------------------------------------------------------------------------------------------
# Wan (diffusers AutoencoderKLWan)
# --------------------------------------------------------------------------------------------------------------------


class WanStreamDecoder:
    """Chunked Wan decode that keeps the causal-conv feature cache between calls."""

    def __init__(self, wan: "WanVAE"):
        self.wan = wan
        self.reset()

    def reset(self) -> None:
        vae = self.wan.vae
        self._feat_cache: list[Any] = [None] * vae._cached_conv_counts["decoder"]
        self._started = False

    @torch.no_grad()
    def decode(self, latent_chunk: torch.Tensor) -> torch.Tensor:
        wan, vae = self.wan, self.wan.vae
        wan._check_latent(latent_chunk)
        z = wan.denormalize(latent_chunk.to(device=wan.device, dtype=wan.dtype))
        x = vae.post_quant_conv(z)  # 1x1x1 conv: no temporal context, safe per chunk
        outs = []
        for i in range(x.shape[2]):
            outs.append(
                vae.decoder(x[:, :, i : i + 1], feat_cache=self._feat_cache, feat_idx=[0], first_chunk=not self._started)
            )
            self._started = True
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.clamp(-1.0, 1.0)


class WanVAE(_LatentNormMixin, nn.Module):
    """Wrapper over diffusers `AutoencoderKLWan` (Wan2.1 z16 8x and Wan2.2 z48 16x `patch_size=2` layouts)."""

    def __init__(self, vae: AutoencoderKLWan):
        super().__init__()
        if not isinstance(vae, AutoencoderKLWan):
            raise TypeError(f"WanVAE wraps an AutoencoderKLWan, got {type(vae).__name__}")
        self.vae = vae

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> "WanVAE":
        p = check_vae_dir(path)
        return cls(AutoencoderKLWan.from_pretrained(str(p), use_safetensors=True, **kwargs))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "WanVAE":
        cfg = {k: v for k, v in config.items() if not k.startswith("_") and k != "backend"}
        return cls(AutoencoderKLWan.from_config(cfg))

    def save_pretrained(self, path: str | os.PathLike, **kwargs) -> None:
        if not kwargs.pop("safe_serialization", True):
            raise ValueError("checkpoints are written as safetensors only")
        self.vae.save_pretrained(str(path), safe_serialization=True, **kwargs)

    @property
    def config(self):
        return self.vae.config

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def z_dim(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def spatial_factor(self) -> int:
        # derived from the layout, not `scale_factor_spatial` (tiny configs leave that at its default)
        downs = len(self.vae.config.dim_mult) - 1
        return (2**downs) * (self.vae.config.patch_size or 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.vae.config.temperal_downsample)

    @property
    def latents_mean(self) -> list[float]:
        return list(self.vae.config.latents_mean)

    @property
    def latents_std(self) -> list[float]:
        return list(self.vae.config.latents_std)

    @torch.no_grad()
    @_outside_autocast
    def encode_video(self, x: torch.Tensor) -> torch.Tensor:
        self._check_video(x)
        posterior = self.vae.encode(x.to(device=self.device, dtype=self.dtype)).latent_dist
        return self.normalize(posterior.mode())

    @torch.no_grad()
    @_outside_autocast
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check_latent(z)
        z = self.denormalize(z.to(device=self.device, dtype=self.dtype))
        return self.vae.decode(z).sample.clamp(-1.0, 1.0)

    def stream_decoder(self) -> WanStreamDecoder:
        return WanStreamDecoder(self)


# --------------------------------------------------------------------------------------------------------------------
# FastVAE: the demo backend
# --------------------------------------------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # start as identity: stable deep stacks without norms
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class FastVAE(_LatentNormMixin, ModelMixin, ConfigMixin):
    """Small 2D conv autoencoder that moves time into channels.

    Encoder: the `temporal_factor` frames of a group are stacked on channels (group 0 = frame 0 repeated) and
    downsampled by pixel-unshuffle stages. Decoder: a 2D pixel-shuffle decoder maps latent i together with the
    `context_latents` previous latents (causal; the stream start repeats latent 0) to `temporal_factor` frames;
    latent 0 keeps only its last frame. The stream decoder carries those previous latents, so chunked decode
    equals one-shot decode exactly. `shortcut`: a parameter-free path puts each cell's mean colour in the first
    latent channels and adds it back (upsampled) to the decoder output, so the nets learn residuals (trains
    several times faster). `shortcut_motion`: the decoder's shortcut ramps each cell's colour linearly across the
    group's frames, from the previous latent's colour to this one's, instead of holding it for all of them. A held
    shortcut makes the decoder draw each latent's frames as one still image and jump at the next latent
    (docs/TRAINING.md, run 10); the encoder is the same either way.
    Level channels run from the latent resolution upwards: `base_channels * channel_mult[i]`.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        z_dim: int = 16,
        spatial_factor: int = 8,
        temporal_factor: int = 4,
        in_channels: int = 3,
        base_channels: int = 32,
        channel_mult: list[int] | None = None,
        num_res_blocks: int = 1,
        context_latents: int = 1,
        shortcut: bool = True,
        shortcut_motion: bool = False,
        latents_mean: float | list[float] = 0.0,
        latents_std: float | list[float] = 1.0,
    ):
        super().__init__()
        levels = int(round(math.log2(spatial_factor)))
        if spatial_factor < 2 or 2**levels != spatial_factor:
            raise ValueError(f"spatial_factor must be a power of two >= 2, got {spatial_factor}")
        if context_latents < 0:
            raise ValueError(f"context_latents must be >= 0, got {context_latents}")
        if temporal_factor < 1:
            raise ValueError(f"temporal_factor must be >= 1, got {temporal_factor}")
        if shortcut_motion and not (shortcut and context_latents >= 1):
            raise ValueError("shortcut_motion needs shortcut=True and context_latents >= 1 (the previous latent)")
        mult = list(channel_mult) if channel_mult is not None else [2] * (levels - 1) + [1]
        if len(mult) != levels:
            raise ValueError(f"channel_mult needs {levels} entries for spatial_factor {spatial_factor}, got {mult}")
        chs = [base_channels * m for m in mult]  # latent res -> full res / 2
        group_ch = in_channels * temporal_factor

        # encoder: full res -> latent res
        enc: list[nn.Module] = []
        prev = group_ch
        for ch in reversed(chs):
            enc += [nn.PixelUnshuffle(2), nn.Conv2d(prev * 4, ch, 3, padding=1)]
            enc += [_ResBlock(ch) for _ in range(num_res_blocks)]
            prev = ch
        enc += [nn.SiLU(), nn.Conv2d(prev, z_dim, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        # decoder: latent res -> full res
        dec: list[nn.Module] = [nn.Conv2d(z_dim * (1 + context_latents), chs[0], 3, padding=1)]
        for i, ch in enumerate(chs):
            dec += [_ResBlock(ch) for _ in range(num_res_blocks)]
            nxt = chs[i + 1] if i + 1 < len(chs) else group_ch
            dec += [nn.SiLU(), nn.Conv2d(ch, nxt * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.decoder = nn.Sequential(*dec)

    # -- interface properties ---------------------------------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        return int(self.config.z_dim)

    @property
    def spatial_factor(self) -> int:
        return int(self.config.spatial_factor)

    @property
    def temporal_factor(self) -> int:
        return int(self.config.temporal_factor)

    @property
    def latents_mean(self) -> float | list[float]:
        return self.config.latents_mean

    @property
    def latents_std(self) -> float | list[float]:
        return self.config.latents_std

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> "FastVAE":
        p = check_vae_dir(path)
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(str(p), **kwargs)

    # -- raw (unnormalised, differentiable) paths used by training --------------------------------------------------
    def _groups(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,T,H,W] -> [B*f, C*tf, H, W]; group 0 is frame 0 repeated tf times."""
        b, c, t, h, w = x.shape
        tf = self.temporal_factor
        f = latent_frames(t, tf)
        first = x[:, :, :1].expand(b, c, tf, h, w)
        g = torch.cat([first, x[:, :, 1:]], dim=2).reshape(b, c, f, tf, h, w)
        return g.permute(0, 2, 3, 1, 4, 5).reshape(b * f, tf * c, h, w)

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        self._check_video(x)
        b, t = x.shape[0], x.shape[2]
        f = latent_frames(t, self.temporal_factor)
        g = self._groups(x)
        z = self.encoder(g)
        if self.config.shortcut:
            z = z + self._block_colour(g)
        return z.reshape(b, f, *z.shape[1:]).transpose(1, 2)

    def _block_colour(self, g: torch.Tensor) -> torch.Tensor:
        """Parameter-free path: group-mean colour per latent cell in the first `in_channels` latent channels."""
        n, _, h, w = g.shape
        tf, c = self.temporal_factor, self.config.in_channels
        col = F.avg_pool2d(g.view(n, tf, c, h, w).mean(1), self.spatial_factor)
        return F.pad(col, (0, 0, 0, 0, 0, self.z_dim - c))

    def _with_context(self, z: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """[B,z,f,h,w] -> [B*f, z*(1+k), h, w]: each latent stacked with its k predecessors (newest first)."""
        k = self.config.context_latents
        b, c, f, h, w = z.shape
        if prev is None:  # stream start: pad by repeating latent 0
            prev = z[:, :, :1].expand(b, c, k, h, w)
        full = torch.cat([prev[:, :, prev.shape[2] - k :], z], dim=2) if k else z
        parts = [full[:, :, k - j : k - j + f] for j in range(k + 1)]
        x = torch.cat(parts, dim=1)  # [B, z*(1+k), f, h, w]
        return x.transpose(1, 2).reshape(b * f, c * (k + 1), h, w)

    def _shortcut_frames(self, z: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """[B,z,f,h,w] -> [B*f, tf*c, H, W]: each frame's block colour, upsampled by nearest neighbour."""
        b, _, f, h, w = z.shape
        tf, c = self.temporal_factor, self.config.in_channels
        col = z[:, :c]
        cols = col.unsqueeze(3).expand(b, c, f, tf, h, w)
        if self.config.shortcut_motion:
            # ramp from the previous latent's colour to this one's, reaching it at the group's last frame: causal
            # and monotonic, so a jittery latent sequence is not overshot (centred extrapolation doubled the
            # generated streams' flicker, docs/TRAINING.md run 10); the price is ~tf/2 frames of lag
            before = col[:, :, :1] if prev is None else prev[:, :c, -1:]
            slope = col - torch.cat([before, col[:, :, :-1]], dim=2)
            offs = torch.arange(1, tf + 1, device=z.device, dtype=z.dtype) / tf - 1.0
            cols = cols + slope.unsqueeze(3) * offs.view(1, 1, 1, tf, 1, 1)
        cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(b * f, tf * c, h, w)
        return F.interpolate(cols, scale_factor=self.spatial_factor, mode="nearest")

    def decode_raw(self, z: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Unclamped decode of raw latents. `prev`: raw latents before this chunk (None: z starts the stream, so
        latent 0 yields 1 frame; otherwise every latent yields temporal_factor frames)."""
        self._check_latent(z)
        b, _, f, h, w = z.shape
        tf, c = self.temporal_factor, self.config.in_channels
        if f == 0:
            return z.new_zeros(b, c, 0, h * self.spatial_factor, w * self.spatial_factor)
        y = self.decoder(self._with_context(z, prev))
        if self.config.shortcut:  # add back the block colour carried by the first latent channels
            y = y + self._shortcut_frames(z, prev)
        y = y.reshape(b, f, tf, c, *y.shape[-2:]).permute(0, 3, 1, 2, 4, 5)  # [B,C,f,tf,H,W]
        y = y.reshape(b, c, f * tf, *y.shape[-2:])
        return y[:, :, tf - 1 :] if prev is None else y

    def forward(self, x: torch.Tensor, noise_scale: torch.Tensor | None = None,
                latents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: returns (reconstruction (unclamped), raw latent). `noise_scale` `[B]`: the decoder sees
        the latent plus Gaussian noise of that many normalised units (decoder fine-tuning, teacher/train_vae.py).
        `latents`: decode these (another VAE's, for a HybridVAE decoder) instead of encoding `x`."""
        z = self.encode_raw(x) if latents is None else latents.to(x)
        if noise_scale is None:
            return self.decode_raw(z), z
        std = _as_channel_tensor(self.latents_std, self.z_dim, "latents_std", z)
        scale = noise_scale.to(z).reshape(-1, *([1] * (z.ndim - 1)))
        return self.decode_raw(z + scale * std * torch.randn_like(z)), z

    # -- public interface ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    @_outside_autocast
    def encode_video(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.encode_raw(x.to(device=self.device, dtype=self.dtype)))

    @torch.no_grad()
    @_outside_autocast
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = self.denormalize(z.to(device=self.device, dtype=self.dtype))
        return self.decode_raw(z).clamp(-1.0, 1.0)

    def stream_decoder(self) -> "FastStreamDecoder":
        return FastStreamDecoder(self)


class FastStreamDecoder:
    """Chunked FastVAE decode; the state is the last `context_latents` latents (None before the stream starts)."""

    def __init__(self, vae: FastVAE):
        self.vae = vae
        self.reset()

    def reset(self) -> None:
        self._prev: torch.Tensor | None = None  # last `context_latents` raw latents (None before the first)

    @torch.no_grad()
    def decode(self, latent_chunk: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = vae.denormalize(latent_chunk.to(device=vae.device, dtype=vae.dtype))
        out = vae.decode_raw(z, prev=self._prev).clamp(-1.0, 1.0)
        if z.shape[2]:
            k = vae.config.context_latents
            hist = z if self._prev is None else torch.cat([self._prev, z], dim=2)
            # before k latents exist, keep the stream-start padding (latent 0 repeated)
            pad = max(0, k - hist.shape[2])
            hist = torch.cat([hist[:, :, :1].expand(-1, -1, pad, -1, -1), hist], dim=2) if pad else hist
            self._prev = hist[:, :, hist.shape[2] - k :] if k else hist[:, :, :0]
        return out


# --------------------------------------------------------------------------------------------------------------------
# HybridVAE: another VAE's encoder with a distilled FastVAE decoder
# --------------------------------------------------------------------------------------------------------------------


class HybridVAE(nn.Module):
    """Encode with `encoder` (e.g. the Wan2.2 VAE whose latents the DiT was trained on), decode with `decoder`, a
    FastVAE trained to decode `encoder`'s *normalised* latents (so its own mean/std are 0/1 and its shortcut, which
    reads colour from the first latent channels, is off). Only the decoder runs per chunk; the encoder runs for the
    conditions and a swap's re-encode, a few single frames (docs/BENCHMARKS.md: the Wan2.2 decode is two thirds of a
    1280x704 chunk). Folder layout: `config.json` (`_class_name: HybridVAE`), `encoder/`, `decoder/`."""

    PARTS = ("encoder", "decoder")

    def __init__(self, encoder: "WanVAE | FastVAE", decoder: "FastVAE"):
        super().__init__()
        if not isinstance(decoder, FastVAE):
            raise TypeError(f"the decoder must be a FastVAE, got {type(decoder).__name__}")
        if isinstance(encoder, HybridVAE):
            encoder = encoder.encoder
        check_decoder_fits(encoder, decoder)
        self.encoder, self.decoder = encoder, decoder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "HybridVAE":
        p = check_vae_dir(path)
        return cls(load_vae(p / "encoder"), FastVAE.from_pretrained(p / "decoder"))

    def save_pretrained(self, path: str | os.PathLike, **kwargs) -> None:
        if not kwargs.pop("safe_serialization", True):
            raise ValueError("checkpoints are written as safetensors only")
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        for part in self.PARTS:
            getattr(self, part).save_pretrained(p / part, safe_serialization=True, **kwargs)
        (p / "config.json").write_text(json.dumps({"_class_name": "HybridVAE", "encoder": type(self.encoder).__name__,
                                                   "decoder": "FastVAE"}, indent=2))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def z_dim(self) -> int:
        return self.encoder.z_dim

    @property
    def spatial_factor(self) -> int:
        return self.encoder.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.encoder.temporal_factor

    @property
    def latents_mean(self):
        return self.encoder.latents_mean

    @property
    def latents_std(self):
        return self.encoder.latents_std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.encoder.normalize(z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.encoder.denormalize(z)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_image(x)

    def encode_video(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_video(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder.decode(z)

    def stream_decoder(self) -> "FastStreamDecoder":
        return self.decoder.stream_decoder()


def decoder_fields(encoder) -> dict[str, Any]:
    """The FastVAE config fields a decoder of `encoder`'s normalised latents must have (the rest is free)."""
    return {"z_dim": encoder.z_dim, "spatial_factor": encoder.spatial_factor,
            "temporal_factor": encoder.temporal_factor, "shortcut": False, "shortcut_motion": False,
            "latents_mean": 0.0, "latents_std": 1.0}


def check_decoder_fits(encoder, decoder: "FastVAE") -> None:
    """Raise unless `decoder` can decode `encoder`'s normalised latents."""
    got = (decoder.z_dim, decoder.spatial_factor, decoder.temporal_factor)
    want = (encoder.z_dim, encoder.spatial_factor, encoder.temporal_factor)
    if got != want:
        raise ValueError(f"decoder latent layout (z_dim, spatial, temporal factor) {got} does not match the encoder's "
                         f"{want}")
    if decoder.config.shortcut:
        raise ValueError("a decoder for another VAE's latents needs shortcut=False (the shortcut reads colour from "
                         "latent channels only a FastVAE encoder writes)")
    stats = [torch.as_tensor(decoder.latents_mean, dtype=torch.float64),
             torch.as_tensor(decoder.latents_std, dtype=torch.float64) - 1.0]
    if any(bool(t.abs().max() > 0) for t in stats):
        raise ValueError("a decoder for another VAE's latents takes them normalised: its latents_mean must be 0 "
                         "and latents_std 1")


# --------------------------------------------------------------------------------------------------------------------
# factories
# --------------------------------------------------------------------------------------------------------------------

_BY_CLASS = {"AutoencoderKLWan": WanVAE, "WanVAE": WanVAE, "FastVAE": FastVAE, "HybridVAE": HybridVAE}


def load_vae(path: str | os.PathLike, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None) -> WanVAE | FastVAE | HybridVAE:
    """Load a VAE folder, choosing the class from `config.json` `_class_name`."""
    p = check_vae_dir(path)
    name = _class_name(p)
    if name not in _BY_CLASS:
        raise ValueError(f"{p / 'config.json'}: unknown VAE class {name!r}; expected one of {sorted(_BY_CLASS)}")
    vae = _BY_CLASS[name].from_pretrained(p)
    vae = vae.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else vae
    return vae.eval()


def build_vae(cfg: dict[str, Any]) -> WanVAE | FastVAE:
    """Fresh (random-weight) VAE from a preset dict `{"backend": "fast"|"wan", **kwargs}`."""
    cfg = dict(cfg)
    backend = cfg.pop("backend", None)
    if backend == "fast":
        return FastVAE(**cfg)
    if backend == "wan":
        return WanVAE.from_config(cfg)
    raise ValueError(f"unknown VAE backend {backend!r}; expected 'fast' or 'wan'")
