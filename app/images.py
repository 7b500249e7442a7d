"""Validate untrusted image bytes and fit them to the engine's resolution."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from .config import ImageLimits


class ImageError(ValueError):
    """A user-facing message about a rejected image."""


def load_image_bytes(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode untrusted bytes to uint8 HxWx3 RGB, checking the header before decoding."""
    if not data:
        raise ImageError("empty file")
    if len(data) > limits.max_upload_bytes:
        raise ImageError(f"file too large ({len(data) / 2**20:.1f} MB > {limits.max_upload_bytes / 2**20:.0f} MB)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large (pixel count)") from None
    except Exception:
        raise ImageError("not a readable image (PNG, JPEG, WEBP, ...)") from None
    if img.format not in limits.allowed_formats:
        raise ImageError(f"unsupported image format {img.format!r}")
    w, h = img.size
    if w * h > limits.max_pixels:
        raise ImageError(f"image too large: {w}x{h} px (max {limits.max_pixels / 1e6:.0f} megapixels)")
    if min(w, h) < limits.min_side:
        raise ImageError(f"image too small: {w}x{h} px (min {limits.min_side} px per side)")
    if max(w, h) / min(w, h) > limits.max_aspect:
        raise ImageError(f"extreme aspect ratio {w}x{h} (max {limits.max_aspect:g}:1)")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            bg = Image.new("RGB", rgba.size, limits.letterbox_rgb)
            bg.paste(rgba, mask=rgba.getchannel("A"))
            img = bg
        else:
            img = img.convert("RGB")
    except Exception:
        raise ImageError("corrupt or truncated image") from None
    return np.asarray(img, dtype=np.uint8).copy()
