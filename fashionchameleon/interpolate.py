"""Display-side frame interpolation between latent frames (training-free).

A causal VAE turns each latent frame into `temporal_factor` pixel frames. The demo FastVAE draws those frames
almost still and jumps at the next latent (docs/TRAINING.md, run 10), so the stream moves in steps of
`temporal_factor` frames. `FlowInterpolator` replaces each latent's frames by motion-compensated in-betweens of two
key frames: the last frame decoded from the previous latent and the last one decoded from this latent.

- Causal and without added latency: a latent's frames need only its own decode and the previous key frame.
- Each latent's last frame is passed through unchanged, so what the policies re-encode (the last decoded frame)
  and the cache are untouched: only the frames on screen change.
- Optical flow is OpenCV's DIS (a maintained, CPU-real-time dense flow; `opencv-python-headless` is already a
  dependency). In-betweens use the linear-motion flow approximation of Super SloMo (Jiang et al., 2018) and a
  time-weighted blend of the two warped keys, so where the flow is wrong (a garment swap) it degrades to a
  cross-fade rather than a jump.
"""

from __future__ import annotations

import cv2
import numpy as np

from .configs import check_interpolation

_DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _warp(img: np.ndarray, grid_x: np.ndarray, grid_y: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: out(x) = img(x + flow(x))."""
    return cv2.remap(img, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def inbetween(a: np.ndarray, b: np.ndarray, alphas, flow_ab: np.ndarray, flow_ba: np.ndarray) -> list[np.ndarray]:
    """Frames at times `alphas` (0 = a, 1 = b) between uint8 RGB images `a` and `b`, given dense flows a->b and
    b->a (HxWx2, pixels). Alpha 0 and 1 return copies of the keys exactly."""
    h, w = a.shape[:2]
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
    af, bf = a.astype(np.float32), b.astype(np.float32)
    out = []
    for t in alphas:
        t = float(t)
        if t <= 0.0:
            out.append(a.copy())
            continue
        if t >= 1.0:
            out.append(b.copy())
            continue
        # flows from the in-between frame back to each key, assuming straight-line motion (Super SloMo eq. 4)
        f_t0 = -(1.0 - t) * t * flow_ab + t * t * flow_ba
        f_t1 = (1.0 - t) ** 2 * flow_ab - t * (1.0 - t) * flow_ba
        mix = (1.0 - t) * _warp(af, grid_x, grid_y, f_t0) + t * _warp(bf, grid_x, grid_y, f_t1)
        out.append(np.clip(mix + 0.5, 0, 255).astype(np.uint8))
    return out


class FlowInterpolator:
    """Streaming in-betweening, one latent group at a time. State: the previous key frame."""

    def __init__(self, temporal_factor: int, preset: str = "ultrafast"):
        if temporal_factor < 1:
            raise ValueError(f"temporal_factor must be >= 1, got {temporal_factor}")
        if preset not in _DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; expected one of {sorted(_DIS_PRESETS)}")
        self.temporal_factor = temporal_factor
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
        self.reset()

    def reset(self) -> None:
        self._key: np.ndarray | None = None

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._dis.calc(_gray(a), _gray(b), None)

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """`frames`: one decoded chunk (uint8 HxWx3), grouped by latent as the VAE emits them: the stream's first
        chunk starts with one frame for latent 0, every other latent gives `temporal_factor` frames."""
        tf = self.temporal_factor
        out: list[np.ndarray] = []
        i = 0
        if self._key is None and len(frames):  # stream start: latent 0 is a single frame, shown as decoded
            self._key = frames[0]
            out.append(frames[0])
            i = 1
        if (len(frames) - i) % tf:
            raise ValueError(f"expected whole latent groups of {tf} frames, got {len(frames) - i}")
        alphas = [(j + 1) / tf for j in range(tf)]
        for s in range(i, len(frames), tf):
            key = frames[s + tf - 1]
            if tf == 1:
                out.append(key)
            else:
                prev = self._key
                out.extend(inbetween(prev, key, alphas, self.flow(prev, key), self.flow(key, prev)))
            self._key = key
        return out


def make_interpolator(mode: str, temporal_factor: int) -> FlowInterpolator | None:
    """The stream's interpolator for `StreamConfig.frame_interpolation` (None: frames are shown as decoded)."""
    if check_interpolation(mode) == "none" or temporal_factor == 1:
        return None
    return FlowInterpolator(temporal_factor)
