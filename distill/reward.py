"""Per-chunk rewards for gradient-reweighted DMD (paper Eq. 6): A = softmax(-R / tau) over chunks.

The paper scores decoded frames with the LAION aesthetic predictor. That model knows nothing about flat-shaded
mannequins and would need a download, so the demo rewards measure what a viewer of the mannequin world sees:

* `colour`: garment colour fidelity. The garment image's non-white pixels give a colour histogram (coarse RGB bins,
  masses m_k); a frame scores `sum_k m_k * min(1, h_k / (area * m_k))`, where h_k is the fraction of the frame in
  bin k and `area` the expected fraction of the frame the upper garment covers. 1 = every garment colour is visible
  on at least its share of the torso area; a chunk that drifts back to the reference's old garment or washes out
  its colours scores lower.
* `sharpness`: s / (s + s0) with s = mean |Laplacian| of the luminance: blurry (averaged-out) chunks score lower.
* `colour_sharpness`: weighted sum of both (default).
* `none`: zeros, i.e. uniform weights = vanilla DMD.

All scores lie in [0, 1], so tau = 0.2 has the same meaning as in the paper (a 0.2 gap = e-fold weight).
Scores are computed per pixel frame, averaged per latent frame (frame 0 alone, then groups of `temporal_factor`)
and then per chunk, as the released code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

REWARDS = ("colour_sharpness", "colour", "sharpness", "none")


@dataclass
class RewardConfig:
    kind: str = "colour_sharpness"
    colour_weight: float = 1.0
    sharpness_weight: float = 1.0
    bins: int = 4  # levels per RGB channel
    garment_area: float = 0.08  # expected fraction of a frame covered by the upper garment
    white_threshold: float = 0.92  # garment-image pixels brighter than this on every channel are background
    sharpness_scale: float = 0.02  # s0: mean |Laplacian| (on [0, 1] luminance) that scores 0.5

    def __post_init__(self):
        if self.kind not in REWARDS:
            raise ValueError(f"reward kind must be one of {REWARDS}, got {self.kind!r}")


def _bin_ids(x01: torch.Tensor, bins: int) -> torch.Tensor:
    """[..., 3] in [0, 1] -> integer bin ids."""
    q = (x01 * bins).long().clamp(0, bins - 1)
    return q[..., 0] * bins * bins + q[..., 1] * bins + q[..., 2]


def colour_fidelity(frames: torch.Tensor, garment: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    """frames `[B,3,T,H,W]`, garment `[B,3,H,W]` in [-1,1] -> `[B,T]` in [0,1]."""
    b, _, t = frames.shape[:3]
    n_bins = cfg.bins ** 3
    g01 = (garment.float() + 1) / 2
    gpx = g01.permute(0, 2, 3, 1).reshape(b, -1, 3)
    fg = ~(gpx > cfg.white_threshold).all(-1)  # [B, P]
    gid = _bin_ids(gpx, cfg.bins)
    m = torch.zeros(b, n_bins, device=frames.device).scatter_add_(1, gid, fg.float())
    has = m.sum(1, keepdim=True) > 0
    m = m / m.sum(1, keepdim=True).clamp_min(1)
    f01 = ((frames.float() + 1) / 2).permute(0, 2, 3, 4, 1).reshape(b, t, -1, 3)
    fid = _bin_ids(f01, cfg.bins)
    h = torch.zeros(b, t, n_bins, device=frames.device).scatter_add_(2, fid, torch.ones_like(fid, dtype=torch.float))
    h = h / f01.shape[2]
    need = cfg.garment_area * m[:, None]  # [B, 1, bins]
    cover = torch.where(need > 0, (h / need.clamp_min(1e-12)).clamp(max=1.0), torch.zeros_like(h))
    score = (m[:, None] * cover).sum(-1)
    return torch.where(has, score, torch.ones_like(score))  # an all-white garment is uninformative


_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def sharpness(frames: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    """`[B,3,T,H,W]` in [-1,1] -> `[B,T]` in [0,1): s / (s + s0), s = mean |Laplacian(luma)|."""
    b, _, t, hgt, wid = frames.shape
    x = (frames.float() + 1) / 2
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).reshape(b * t, 1, hgt, wid)
    lap = F.conv2d(luma, _LAPLACE.to(luma)[None, None]).abs().mean(dim=(1, 2, 3)).view(b, t)
    return lap / (lap + cfg.sharpness_scale)


def frame_rewards(frames: torch.Tensor, garment: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    """Per pixel frame rewards `[B, T]`."""
    b, _, t = frames.shape[:3]
    r = torch.zeros(b, t, device=frames.device)
    if cfg.kind in ("colour", "colour_sharpness"):
        r = r + cfg.colour_weight * colour_fidelity(frames, garment, cfg)
    if cfg.kind in ("sharpness", "colour_sharpness"):
        r = r + cfg.sharpness_weight * sharpness(frames, cfg)
    return r


def per_latent(scores: torch.Tensor, temporal_factor: int) -> torch.Tensor:
    """`[B, T]` pixel-frame scores -> `[B, f]`: frame 0 alone, then groups of `temporal_factor`."""
    first, rest = scores[:, :1], scores[:, 1:]
    if rest.shape[1] % temporal_factor:
        raise ValueError(f"{scores.shape[1]} frames is not 1 + {temporal_factor}*k")
    return torch.cat([first, rest.reshape(scores.shape[0], -1, temporal_factor).mean(-1)], dim=1)


def per_chunk(latent_scores: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """`[B, f]` -> `[B, ceil(f / chunk)]` (a short last chunk averages what it has)."""
    b, f = latent_scores.shape
    n = -(-f // chunk_frames)
    pad = n * chunk_frames - f
    x = F.pad(latent_scores, (0, pad), value=float("nan")).view(b, n, chunk_frames)
    return x.nanmean(-1)


def chunk_weights(chunk_rewards: torch.Tensor, chunk_frames: int, frames: int, tau: float) -> torch.Tensor:
    """Per latent-frame weights A `[B, frames]` (sum 1 per sample): softmax(-R/tau) over frames, R broadcast per
    chunk. tau = inf gives 1/frames everywhere, i.e. vanilla DMD."""
    b = chunk_rewards.shape[0]
    if math.isinf(tau):
        return torch.full((b, frames), 1.0 / frames, device=chunk_rewards.device)
    if tau <= 0:
        raise ValueError(f"tau must be > 0 (or inf), got {tau}")
    r = chunk_rewards.float().repeat_interleave(chunk_frames, dim=1)[:, :frames]
    return torch.softmax(-r / tau, dim=1)


@torch.no_grad()
def chunk_rewards(pixels: torch.Tensor, garment: torch.Tensor, cfg: RewardConfig, temporal_factor: int,
                  chunk_frames: int) -> torch.Tensor:
    """Decoded clip `[B,3,T,H,W]` -> per-chunk rewards `[B, n_chunks]`."""
    return per_chunk(per_latent(frame_rewards(pixels, garment, cfg), temporal_factor), chunk_frames)


@torch.no_grad()
def garment_weight_map(pixels: torch.Tensor, evaluator, weight: float, temporal_factor: int,
                       latent_hw: tuple[int, int]) -> torch.Tensor:
    """Decoded clip `[B,3,T,H,W]` in [-1,1] -> `[B,1,f,h,w]`: 1 + (weight - 1) * the share of each latent cell that
    the evaluation model segments as upper garment (pixel frames grouped per latent frame as `per_latent` does)."""
    import numpy as np

    from fashionchameleon.data import LABELS

    upper = LABELS.index("upper")
    frames = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
    m = torch.from_numpy(np.stack([evaluator.masks(v) == upper for v in frames])).float()  # [B, T, H, W]
    b, t = m.shape[:2]
    m = F.adaptive_avg_pool2d(m, latent_hw)
    first, rest = m[:, :1], m[:, 1:]
    if rest.shape[1] % temporal_factor:
        raise ValueError(f"{t} frames is not 1 + {temporal_factor}*k")
    rest = rest.reshape(b, -1, temporal_factor, *latent_hw).mean(2)
    return (1.0 + (weight - 1.0) * torch.cat([first, rest], dim=1))[:, None].to(pixels.device)
