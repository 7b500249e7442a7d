"""Image preprocessing shared by training, streaming and the app (paper §B)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

WHITE = 255


def as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Accept HxW, HxWx3 or HxWx4 arrays (uint8 or float in [0, 1]) and return HxWx3 uint8."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {a.shape}")
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    if min(a.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {a.shape}")
    return np.ascontiguousarray(a)


def fit_crop(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to cover `height x width`, then centre-crop (the reference / video preprocessing)."""
    a = as_rgb_uint8(img)
    h, w = a.shape[:2]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    r = cv2.resize(a, (nw, nh), interpolation=interp)
    y, x = (nh - height) // 2, (nw - width) // 2
    return np.ascontiguousarray(r[y:y + height, x:x + width])


def letterbox_white(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to fit inside `height x width` keeping the aspect ratio, pad with white (garment images)."""
    a = as_rgb_uint8(img)
    h, w = a.shape[:2]
    s = min(height / h, width / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    r = cv2.resize(a, (nw, nh), interpolation=interp)
    out = np.full((height, width, 3), WHITE, np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    out[y:y + nh, x:x + nw] = r
    return out


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] float in [-1, 1]."""
    t = torch.from_numpy(as_rgb_uint8(img)).permute(2, 0, 1).float()
    return (t / 127.5 - 1.0).unsqueeze(0)


def to_uint8_frames(x: torch.Tensor) -> np.ndarray:
    """[B=1, 3, T, H, W] in [-1, 1] -> T x H x W x 3 uint8."""
    x = x[0].float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()
