"""Evaluation models and metric functions for the mannequin-world benchmark (docs/EVAL.md).

The evaluation model is a tiny U-Net segmenter trained on the world's TRAIN split label masks
(background/skin/hair/upper/lower/shoes). Everything else is derived from its masks:

* landmarks: per-part centroids + silhouette centroid/top/bottom, `[K, 2]` in pixels (NaN when absent);
* garment fidelity: Lab colour-histogram similarity and gradient-orientation texture similarity between the
  frame's upper-garment pixels and the product image's garment pixels, both in [0, 1];
* non-target preservation / identity: colour similarity of lower/skin/hair/background (and body height) vs the
  reference image;
* continuity, flicker, drift and swap success built on top (see each function's docstring).

Images are uint8 HxWx3 RGB; masks are uint8 HxW with label ids in `LABELS` order.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .data.world import LABELS, MannequinWorld

BACKGROUND, SKIN, HAIR, UPPER, LOWER, SHOES = (LABELS.index(n) for n in
                                               ("background", "skin", "hair", "upper", "lower", "shoes"))
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVALUATOR = Path(os.environ.get("FASHIONCHAMELEON_ASSETS", REPO_ROOT / "assets")) / "checkpoints" / "evaluator_tiny"

# landmark order returned by `mask_landmarks`
LANDMARK_PARTS = ("skin", "hair", "upper", "lower", "shoes")
LANDMARK_NAMES = tuple(f"{p}_centroid" for p in LANDMARK_PARTS) + ("body_centroid", "body_top", "body_bottom")
# continuity uses landmarks a garment swap does not move: part centroids of the garments (and of skin, which
# sleeves cover) jump at a swap even in a perfect render
MOTION_LANDMARKS = ("hair_centroid", "shoes_centroid", "body_centroid")
NON_TARGET = ("lower", "skin", "hair", "background")


@dataclass(frozen=True)
class MetricConfig:
    """Every threshold / bin count the metrics use."""

    lab_bins: tuple[int, int, int] = (4, 8, 8)  # L, a, b bins of the colour histogram (OpenCV 8-bit Lab)
    orient_bins: int = 8  # gradient orientation bins over [0, pi)
    texture_floor: float = 2.0  # per-bin gradient energy (levels/px) that counts as "no texture"
    colour_weight: float = 0.5  # fidelity = w * colour + (1 - w) * pattern
    white_level: int = 245  # product-image pixels with all channels above this are the white backdrop
    min_region_px: int = 12  # regions smaller than this are treated as absent (metric = NaN)
    erode_px: int = 1  # texture is measured inside the region, away from its outline
    extent_quantile: float = 0.01  # robust top/bottom of the silhouette (ignores stray pixels)
    jump_floor_px: float = 0.25  # lower bound of the "ordinary" landmark jump (static clips)
    jump_floor_px_level: float = 0.25  # same for the frame-difference continuity (intensity levels)
    static_erode_px: int = 2  # flicker is measured on background pixels this far from the person


DEFAULT_METRICS = MetricConfig()


# ----------------------------------------------------------------------------- segmenter
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(groups, cout), cout), nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(min(groups, cout), cout), nn.SiLU())

    def forward(self, x):
        return self.net(x)


class TinySegmenter(ModelMixin, ConfigMixin):
    """Small U-Net: RGB in [-1, 1] -> per-pixel logits over `class_names`.

    It runs at 1/`input_downsample` resolution (CPU budget) and upsamples its logits to the input size."""

    @register_to_config
    def __init__(self, in_channels: int = 3, class_names: tuple = LABELS, block_channels: tuple = (12, 24, 48),
                 norm_groups: int = 4, height: int = 160, width: int = 128, input_downsample: int = 2):
        super().__init__()
        ch = list(block_channels)
        self.down = nn.ModuleList()
        cin = in_channels
        for c in ch:
            self.down.append(_Block(cin, c, norm_groups))
            cin = c
        self.up = nn.ModuleList(_Block(ch[i + 1] + ch[i], ch[i], norm_groups) for i in reversed(range(len(ch) - 1)))
        self.head = nn.Conv2d(ch[0], len(class_names), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.config.input_downsample > 1:
            x = F.avg_pool2d(x, self.config.input_downsample)
        skips = []
        for i, blk in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = blk(x)
            skips.append(x)
        for blk, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = blk(torch.cat([x, skip], 1))
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch: int = 32) -> np.ndarray:
        """uint8 [T, H, W, 3] (or one HxWx3) -> uint8 label masks [T, H, W] at the input size."""
        single = frames.ndim == 3
        frames = frames[None] if single else frames
        T, H, W = frames.shape[:3]
        h, w = self.config.height, self.config.width
        dev = next(self.parameters()).device
        out = np.empty((T, H, W), np.uint8)
        for i in range(0, T, batch):
            chunk = frames[i:i + batch]
            if (H, W) != (h, w):
                chunk = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in chunk])
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            lab = self(x).argmax(1).to(torch.uint8).cpu().numpy()
            if (H, W) != (h, w):
                lab = np.stack([cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST) for m in lab])
            out[i:i + batch] = lab
        return out[0] if single else out


def load_segmenter(path: str | os.PathLike | None = None) -> TinySegmenter:
    path = Path(path) if path is not None else DEFAULT_EVALUATOR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no evaluator checkpoint at {path} (train one: python -m fashionchameleon.metrics "
                                f"train --out {path})")
    return TinySegmenter.from_pretrained(path, use_safetensors=True).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- region helpers
def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask
    k = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), k).astype(bool)


def product_mask(product: np.ndarray, cfg: MetricConfig = DEFAULT_METRICS) -> np.ndarray:
    """Garment pixels of a product image: everything that is not the white backdrop."""
    return ~np.all(product > cfg.white_level, axis=-1)


def lab_histogram(img: np.ndarray, mask: np.ndarray, cfg: MetricConfig = DEFAULT_METRICS) -> np.ndarray | None:
    """Normalised, lightly smoothed joint Lab histogram of the masked pixels; None if too few pixels."""
    if mask.sum() < cfg.min_region_px:
        return None
    lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB)[mask].astype(np.int64)
    bins = np.asarray(cfg.lab_bins)
    idx = np.minimum(lab * bins // 256, bins - 1)
    flat = (idx[:, 0] * bins[1] + idx[:, 1]) * bins[2] + idx[:, 2]
    h = np.bincount(flat, minlength=int(np.prod(bins))).reshape(bins).astype(np.float64)
    for ax in range(3):  # [1, 2, 1] smoothing so near-identical colours on a bin edge still match
        h = 0.5 * h + 0.25 * (np.roll(h, 1, ax) + np.roll(h, -1, ax))
    return h / h.sum()


def colour_similarity(img_a, mask_a, img_b, mask_b, cfg: MetricConfig = DEFAULT_METRICS) -> float:
    """Bhattacharyya coefficient sum(sqrt(p * q)) of the two Lab histograms, in [0, 1]; NaN if a region is absent."""
    p, q = lab_histogram(img_a, mask_a, cfg), lab_histogram(img_b, mask_b, cfg)
    if p is None or q is None:
        return float("nan")
    return float(np.clip(np.sqrt(p * q).sum(), 0.0, 1.0))


def region_kept(frame, mask, reference, ref_mask, cfg: MetricConfig = DEFAULT_METRICS) -> float:
    """`colour_similarity` of a region the reference shows: 0 when the frame lost it (a dissolved body scores
    low instead of dropping out of the mean), NaN only when the reference has no such region."""
    if ref_mask.sum() < cfg.min_region_px:
        return float("nan")
    if mask.sum() < cfg.min_region_px:
        return 0.0
    return colour_similarity(frame, mask, reference, ref_mask, cfg)


def texture_descriptor(img: np.ndarray, mask: np.ndarray, cfg: MetricConfig = DEFAULT_METRICS) -> np.ndarray | None:
    """Mean gradient magnitude per orientation bin (orientation mod pi) over the eroded region.

    Stripes put their energy in one bin, checks in two orthogonal bins, solids have ~0 energy everywhere."""
    inner = _erode(mask, cfg.erode_px)
    if inner.sum() < cfg.min_region_px:
        inner = mask
    if inner.sum() < cfg.min_region_px:
        return None
    g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag, ang = np.hypot(gx, gy)[inner], np.mod(np.arctan2(gy, gx)[inner], np.pi)
    b = np.minimum((ang / np.pi * cfg.orient_bins).astype(int), cfg.orient_bins - 1)
    return np.bincount(b, weights=mag, minlength=cfg.orient_bins) / inner.sum()


def texture_similarity(d_a, d_b, cfg: MetricConfig = DEFAULT_METRICS) -> float:
    """Weighted Jaccard sum(min(a, b) + f) / sum(max(a, b) + f) with a per-bin floor f; NaN if absent."""
    if d_a is None or d_b is None:
        return float("nan")
    f = cfg.texture_floor
    return float((np.minimum(d_a, d_b) + f).sum() / (np.maximum(d_a, d_b) + f).sum())


class GarmentReference:
    """A product image prepared once: its garment pixels and Lab histogram (texture is scale-matched per frame)."""

    def __init__(self, product: np.ndarray, cfg: MetricConfig = DEFAULT_METRICS):
        self.cfg = cfg
        m = product_mask(product, cfg)
        if m.sum() < cfg.min_region_px:
            raise ValueError("product image has no garment pixels (all white?)")
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        self.crop, self.mask = product[y0:y1, x0:x1], m[y0:y1, x0:x1]
        self.hist = lab_histogram(self.crop, self.mask, cfg)
        self._tex: dict[int, np.ndarray | None] = {}

    def texture_at(self, region_px: int) -> np.ndarray | None:
        """Texture descriptor with the garment rescaled to cover about `region_px` pixels (pattern periods
        in the product image are larger than on the small figure in a frame)."""
        key = int(round(math.log2(max(region_px, 1)) * 4))  # cache by quarter-octave of area
        if key not in self._tex:
            s = min(1.0, math.sqrt(2 ** (key / 4) / self.mask.sum()))
            h, w = self.mask.shape
            size = (max(1, round(w * s)), max(1, round(h * s)))
            img = cv2.resize(self.crop, size, interpolation=cv2.INTER_AREA)
            m = cv2.resize(self.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            self._tex[key] = texture_descriptor(img, m, self.cfg)
        return self._tex[key]


def garment_fidelity(frame: np.ndarray, mask: np.ndarray, garment: GarmentReference | np.ndarray,
                     cfg: MetricConfig = DEFAULT_METRICS, parts: bool = False):
    """How well the frame's upper-garment pixels (`mask == UPPER`) match the product image, in [0, 1].

    fidelity = w * colour + (1 - w) * pattern, colour = Bhattacharyya coefficient of Lab histograms,
    pattern = weighted Jaccard of orientation-energy descriptors (product rescaled to the region's area).
    NaN when the frame shows no upper garment. `parts=True` returns (fidelity, colour, pattern)."""
    g = garment if isinstance(garment, GarmentReference) else GarmentReference(garment, cfg)
    region = mask == UPPER
    n = int(region.sum())
    h = lab_histogram(frame, region, cfg)
    if h is None:
        out = (float("nan"),) * 3
    else:
        colour = float(np.clip(np.sqrt(h * g.hist).sum(), 0.0, 1.0))
        pattern = texture_similarity(texture_descriptor(frame, region, cfg), g.texture_at(n), cfg)
        out = (cfg.colour_weight * colour + (1 - cfg.colour_weight) * pattern, colour, pattern)
    return out if parts else out[0]


def non_target_preservation(frame, mask, reference, ref_mask, cfg: MetricConfig = DEFAULT_METRICS) -> dict:
    """Colour similarity (as in `colour_similarity`) of lower garment, skin, hair and background vs the reference.

    Returns {class: score} plus "mean" over the classes the reference shows (one the frame lost scores 0)."""
    out = {name: region_kept(frame, mask == LABELS.index(name), reference, ref_mask == LABELS.index(name), cfg)
           for name in NON_TARGET}
    vals = [v for v in out.values() if not math.isnan(v)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def body_extent(mask: np.ndarray, cfg: MetricConfig = DEFAULT_METRICS) -> float:
    """Robust vertical extent of the silhouette in pixels (quantiles of the body rows)."""
    ys = np.nonzero(mask != BACKGROUND)[0]
    if len(ys) < cfg.min_region_px:
        return float("nan")
    lo, hi = np.quantile(ys, [cfg.extent_quantile, 1 - cfg.extent_quantile])
    return float(hi - lo + 1)


def identity_preservation(frame, mask, reference, ref_mask, cfg: MetricConfig = DEFAULT_METRICS) -> dict:
    """Identity / body: skin and hair colour similarity, and body-height ratio min(h, h_ref) / max(h, h_ref).

    "mean" averages the terms the reference allows (all in [0, 1]); skin, hair or a body the frame lost score 0."""
    ha, hb = body_extent(mask, cfg), body_extent(ref_mask, cfg)
    height = float("nan") if math.isnan(hb) else 0.0 if math.isnan(ha) else float(min(ha, hb) / max(ha, hb))
    out = {
        "skin": region_kept(frame, mask == SKIN, reference, ref_mask == SKIN, cfg),
        "hair": region_kept(frame, mask == HAIR, reference, ref_mask == HAIR, cfg),
        "height": height,
    }
    vals = [v for v in out.values() if not math.isnan(v)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def silhouette_iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    a, b = mask_a != BACKGROUND, mask_b != BACKGROUND
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else float("nan")


# ----------------------------------------------------------------------------- landmarks and motion
def mask_landmarks(masks: np.ndarray, cfg: MetricConfig = DEFAULT_METRICS) -> np.ndarray:
    """[T, H, W] (or HxW) label masks -> [T, K, 2] (x, y) landmarks in `LANDMARK_NAMES` order, NaN when absent."""
    single = masks.ndim == 2
    masks = masks[None] if single else masks
    T, H, W = masks.shape
    out = np.full((T, len(LANDMARK_NAMES), 2), np.nan, np.float32)
    xs_grid = np.arange(W, dtype=np.float64)
    ys_grid = np.arange(H, dtype=np.float64)
    for t in range(T):
        m = masks[t]
        for k, part in enumerate(LANDMARK_PARTS):
            sel = m == LABELS.index(part)
            n = sel.sum()
            if n >= cfg.min_region_px:
                out[t, k] = (sel.sum(0) @ xs_grid / n, sel.sum(1) @ ys_grid / n)
        body = m != BACKGROUND
        n = body.sum()
        if n >= cfg.min_region_px:
            cx, cy = body.sum(0) @ xs_grid / n, body.sum(1) @ ys_grid / n
            ys = np.nonzero(body)[0]
            lo, hi = np.quantile(ys, [cfg.extent_quantile, 1 - cfg.extent_quantile])
            k = len(LANDMARK_PARTS)
            out[t, k], out[t, k + 1], out[t, k + 2] = (cx, cy), (cx, lo), (cx, hi)
    return out[0] if single else out


def landmark_jumps(landmarks: np.ndarray) -> np.ndarray:
    """[T, K, 2] -> [T-1]: mean landmark displacement (px) between consecutive frames over landmarks present in both."""
    d = np.linalg.norm(np.diff(landmarks.astype(np.float64), axis=0), axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (nobody visible) stay NaN
        return np.nanmean(d, axis=1)


def frame_jumps(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> [T-1]: mean absolute difference (levels) between consecutive frames."""
    out = np.empty(len(frames) - 1)
    for i in range(len(frames) - 1):
        out[i] = cv2.absdiff(frames[i], frames[i + 1]).mean()
    return out


def continuity_ratio(jumps: np.ndarray, swap_frames, floor: float) -> list[float]:
    """Jump into each swap frame s (between s-1 and s) divided by the median of the other jumps.

    1.0 = the swap is as smooth as ordinary motion; >> 1 = a visible cut. The median is floored by `floor`
    so a static clip does not divide by ~0."""
    jumps = np.asarray(jumps, np.float64)
    idx = [s - 1 for s in swap_frames if 0 < s <= len(jumps)]
    ordinary = np.delete(jumps, idx)
    ordinary = ordinary[~np.isnan(ordinary)]
    base = max(float(np.median(ordinary)) if len(ordinary) else float("nan"), floor)
    return [float(jumps[i] / base) if not math.isnan(jumps[i]) else float("nan") for i in idx]


def motion_jumps(landmarks: np.ndarray) -> np.ndarray:
    """[T, K, 2] (all `LANDMARK_NAMES`) -> [T-1] px moves of the garment-invariant `MOTION_LANDMARKS`."""
    ix = [LANDMARK_NAMES.index(n) for n in MOTION_LANDMARKS]
    return landmark_jumps(landmarks[:, ix])


def motion_continuity(landmarks: np.ndarray, swap_frames, cfg: MetricConfig = DEFAULT_METRICS) -> list[float]:
    """Jump of the garment-invariant `MOTION_LANDMARKS` at each swap frame (see `continuity_ratio`)."""
    return continuity_ratio(motion_jumps(landmarks), swap_frames, cfg.jump_floor_px)


def temporal_flicker(frames: np.ndarray, masks: np.ndarray | None = None,
                     cfg: MetricConfig = DEFAULT_METRICS) -> float:
    """Mean absolute difference (intensity levels, 0-255) of consecutive frames over static pixels: background
    in both frames, eroded away from the person. Without masks every pixel counts. 0 = no flicker."""
    vals = []
    for i in range(len(frames) - 1):
        d = cv2.absdiff(frames[i], frames[i + 1]).mean(-1)
        if masks is None:
            vals.append(d.mean())
            continue
        static = _erode((masks[i] == BACKGROUND) & (masks[i + 1] == BACKGROUND), cfg.static_erode_px)
        if static.sum() >= cfg.min_region_px:
            vals.append(d[static].mean())
    return float(np.mean(vals)) if vals else float("nan")


def long_drift(fidelity: np.ndarray, early: int, late: int, window: int) -> dict:
    """Fidelity (per frame, NaN allowed) averaged over `window` frames ending at `early` and at `late`;
    drift = early - late (positive = the garment degrades over the long stream)."""
    f = np.asarray(fidelity, np.float64)

    def at(i):
        seg = f[max(0, i - window + 1): i + 1]
        seg = seg[~np.isnan(seg)]
        return float(seg.mean()) if len(seg) else float("nan")

    e, lt = at(early), at(late)
    return {"fidelity_early": e, "fidelity_late": lt, "drift": e - lt}


def swap_success(fid_new: float, fid_old: float) -> float:
    """1 if the segment looks more like the NEW garment than the OLD one, 0 if not, NaN if undecidable."""
    if math.isnan(fid_new) or math.isnan(fid_old):
        return float("nan")
    return float(fid_new > fid_old)


# ----------------------------------------------------------------------------- segmenter training / accuracy
@dataclass(frozen=True)
class SegTrainConfig:
    """Quick CPU training on TRAIN-split renders."""

    pool_frames: int = 3072  # rendered training frames (random clips, random times)
    clip_frames: int = 2  # consecutive frames per rendered clip
    max_start_frame: int = 1200  # clips start anywhere in a long stream
    steps: int = 2000
    batch: int = 12
    lr: float = 3e-3
    weight_decay: float = 1e-4
    blur_sigma_max: float = 1.5  # augmentation: generated frames are softer than renders
    noise_std_max: float = 6.0  # augmentation: additive noise (levels)
    gain_max: float = 0.08  # augmentation: brightness gain +- this
    eval_frames: int = 256  # held-out TEST-split frames for the reported accuracy
    seed: int = 0


def render_split_frames(world: MannequinWorld, split: str, n: int, clip: int, max_start: int, seed: int,
                        size: tuple[int, int] | None = None):
    """n frames (+ masks, GT keypoints) from `split`-seeded triplet entities at random stream times."""
    rng = np.random.default_rng(seed)
    frames, masks = [], []
    i = 0
    while sum(len(f) for f in frames) < n:
        s = world.triplet_seeds(int(rng.integers(0, 1 << 30)), split)
        person = world.sample_person(s["person"])
        upper = world.sample_upper_garment(s["upper"])
        lower = world.sample_lower_garment(s["lower"])
        bg = world.sample_background(s["background"])
        motion = world.sample_motion(s["motion"])
        v, gt = world.render_frames(person, upper, lower, bg, motion, clip, size,
                                    start_frame=int(rng.integers(0, max_start)))
        frames.append(v)
        masks.append(gt["masks"])
        i += 1
    return np.concatenate(frames)[:n], np.concatenate(masks)[:n]


def _augment(x: torch.Tensor, cfg: SegTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """x: [B, 3, H, W] float levels 0..255."""
    B = x.shape[0]
    out = []
    for i in range(B):
        xi = x[i:i + 1]
        sigma = float(torch.rand(1, generator=gen)) * cfg.blur_sigma_max
        if sigma > 0.3:
            r = max(1, int(math.ceil(2 * sigma)))
            k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
            k = k / k.sum()
            xi = F.conv2d(F.pad(xi, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
            xi = F.conv2d(F.pad(xi, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        out.append(xi)
    x = torch.cat(out)
    gain = 1 + (torch.rand(B, 1, 1, 1, generator=gen) * 2 - 1) * cfg.gain_max
    noise = torch.randn(x.shape, generator=gen) * torch.rand(B, 1, 1, 1, generator=gen) * cfg.noise_std_max
    return (x * gain + noise).clamp(0, 255)


def train_segmenter(out: str | os.PathLike, cfg: SegTrainConfig = SegTrainConfig(),
                    model_kwargs: dict | None = None, log=print) -> dict:
    """Train on TRAIN-split renders, measure on TEST-split renders, save safetensors + README + metrics.json."""
    torch.manual_seed(cfg.seed)
    world = MannequinWorld()
    size = (world.config.height, world.config.width)
    t0 = time.time()
    frames, masks = render_split_frames(world, "train", cfg.pool_frames, cfg.clip_frames, cfg.max_start_frame,
                                        cfg.seed, size)
    log(f"rendered {len(frames)} train frames in {time.time() - t0:.1f}s")
    model = TinySegmenter(height=size[0], width=size[1], **(model_kwargs or {}))
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    # class weights: inverse sqrt frequency so thin parts (hair, shoes) are not ignored
    freq = np.bincount(masks.ravel(), minlength=len(LABELS)).astype(np.float64) + 1
    w = torch.tensor((freq.sum() / freq) ** 0.5, dtype=torch.float32)
    w = w / w.mean()
    gen = torch.Generator().manual_seed(cfg.seed)
    X = torch.from_numpy(frames).permute(0, 3, 1, 2)
    Y = torch.from_numpy(masks).long()
    t0 = time.time()
    model.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(X), (cfg.batch,), generator=gen)
        x = _augment(X[idx].float(), cfg, gen) / 127.5 - 1.0
        loss = F.cross_entropy(model(x), Y[idx], weight=w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    train_s = time.time() - t0
    model.eval()
    acc = segmenter_accuracy(model, world, cfg.eval_frames, seed=cfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    report = {"train": asdict(cfg), "params": n_params, "train_seconds": train_s, "threads": torch.get_num_threads(),
              "heldout_test": acc}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "README.md").write_text(_card(report))
    return report


def segmenter_accuracy(model: TinySegmenter, world: MannequinWorld | None = None, n: int = 256, seed: int = 0,
                       split: str = "test", cfg: MetricConfig = DEFAULT_METRICS) -> dict:
    """Per-class IoU (over all pixels of n held-out frames), pixel accuracy and landmark error (px, predicted-mask
    landmarks vs GT-mask landmarks) on `split` renders, clean and blurred (sigma = 1 px, like decoded frames)."""
    world = world or MannequinWorld()
    size = (model.config.height, model.config.width)
    frames, masks = render_split_frames(world, split, n, 1, SegTrainConfig().max_start_frame, seed + 1, size)
    res = {"frames": int(len(frames)), "split": split}
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in frames])
    for name, fr in (("clean", frames), ("blur1", blurred)):
        pred = model.predict(fr)
        iou = {}
        for c, lab in enumerate(LABELS):
            inter = ((pred == c) & (masks == c)).sum()
            union = ((pred == c) | (masks == c)).sum()
            iou[lab] = float(inter / union) if union else float("nan")
        lp, lg = mask_landmarks(pred, cfg), mask_landmarks(masks, cfg)
        err = np.linalg.norm(lp - lg, axis=-1)
        per_lm = {k: float(np.nanmean(err[:, i])) for i, k in enumerate(LANDMARK_NAMES)}
        res[name] = {"iou": iou, "miou": float(np.nanmean(list(iou.values()))),
                     "pixel_acc": float((pred == masks).mean()),
                     "landmark_err_px": float(np.nanmean(err)), "landmark_err_px_per_point": per_lm}
    return res


def _card(r: dict) -> str:
    t = r["train"]
    lines = [
        "# evaluator_tiny: mannequin-world part segmenter",
        "",
        f"`TinySegmenter` (fashionchameleon/metrics.py), {r['params']:,} parameters, diffusers layout "
        "(`config.json` + `diffusion_pytorch_model.safetensors`). Labels: " + ", ".join(LABELS) + ".",
        "",
        "## Training",
        f"- data: {t['pool_frames']} frames rendered from TRAIN-split entity seeds "
        f"(`MannequinWorld.triplet_seeds(i, 'train')`, clips of {t['clip_frames']} frames at random stream times "
        f"< {t['max_start_frame']}), 160x128",
        f"- {t['steps']} AdamW steps, batch {t['batch']}, one-cycle LR {t['lr']}, class-weighted cross-entropy; "
        f"augmentation: Gaussian blur sigma <= {t['blur_sigma_max']}, noise std <= {t['noise_std_max']}, "
        f"gain +-{t['gain_max']}",
        f"- {r['train_seconds'] / 60:.1f} min on {r['threads']} CPU thread(s); "
        "reproduce: `python -m fashionchameleon.metrics train --out assets/checkpoints/evaluator_tiny`",
        "",
        f"## Held-out accuracy ({r['heldout_test']['frames']} TEST-split frames, never seen in training)",
        "",
        "| input | mIoU | pixel acc | " + " | ".join(f"IoU {c}" for c in LABELS) + " | landmark err (px) |",
        "|---|---|---|" + "---|" * len(LABELS) + "---|",
    ]
    for name in ("clean", "blur1"):
        a = r["heldout_test"][name]
        lines.append(f"| {name} | {a['miou']:.3f} | {a['pixel_acc']:.3f} | "
                     + " | ".join(f"{a['iou'][c]:.3f}" for c in LABELS) + f" | {a['landmark_err_px']:.2f} |")
    lines += ["", "`blur1` = the same frames blurred with a 1 px Gaussian (decoded frames are softer than renders). "
              "Landmark error = mean distance between landmarks (part centroids, body centroid/top/bottom) "
              "computed from predicted vs ground-truth masks.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fashionchameleon.metrics")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the evaluator segmenter on TRAIN-split renders")
    tr.add_argument("--out", default=str(DEFAULT_EVALUATOR))
    tr.add_argument("--steps", type=int, default=SegTrainConfig.steps)
    tr.add_argument("--pool-frames", type=int, default=SegTrainConfig.pool_frames)
    tr.add_argument("--threads", type=int, default=1)
    ac = sub.add_parser("accuracy", help="held-out accuracy of a trained segmenter")
    ac.add_argument("--checkpoint", default=str(DEFAULT_EVALUATOR))
    ac.add_argument("--frames", type=int, default=SegTrainConfig.eval_frames)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        torch.set_num_threads(a.threads)
        cfg = SegTrainConfig(steps=a.steps, pool_frames=a.pool_frames)
        r = train_segmenter(a.out, cfg)
        print(json.dumps(r["heldout_test"], indent=2))
    else:
        print(json.dumps(segmenter_accuracy(load_segmenter(a.checkpoint), n=a.frames), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
