"""Bundled + uploaded reference people and garments, fitted to the engine's resolution."""
from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fashionchameleon.imageops import fit_crop, letterbox_white

from .config import ImageLimits
from .images import ImageError, load_image_bytes
from fashionchameleon.timeline import IMAGE_SUFFIXES

KINDS = ("reference", "garment")
UPLOAD_PREFIX = "upload-"
_HASH_CHARS = 10


@dataclass(frozen=True)
class Item:
    id: str
    kind: str
    path: Path  # file shown in galleries (bundled file, or the fitted upload as PNG)
    bundled: bool


class Catalog:
    def __init__(self, height: int, width: int, references_dir: Path, garments_dir: Path,
                 limits: ImageLimits = ImageLimits(), max_uploads: int = 64, upload_dir: Path | None = None):
        self.height, self.width, self.limits, self.max_uploads = height, width, limits, max_uploads
        self._dirs = {"reference": Path(references_dir), "garment": Path(garments_dir)}
        self._upload_dir = Path(upload_dir or tempfile.mkdtemp(prefix="fc_uploads_"))
        self._uploads: dict[str, OrderedDict[str, Item]] = {k: OrderedDict() for k in KINDS}
        self._rgb: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def upload_dir(self) -> Path:
        return self._upload_dir

    def _fit(self, kind: str, rgb: np.ndarray) -> np.ndarray:
        if kind == "reference":
            return fit_crop(rgb, self.height, self.width)
        return letterbox_white(rgb, self.height, self.width)

    def bundled(self, kind: str) -> list[Item]:
        d = self._dirs[kind]
        if not d.is_dir():
            return []
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return [Item(p.stem, kind, p, True) for p in files]

    def items(self, kind: str) -> list[Item]:
        with self._lock:
            uploads = list(self._uploads[kind].values())
        return self.bundled(kind) + uploads

    def add_upload(self, kind: str, data: bytes) -> Item:
        """Validate + fit an uploaded image; raises ImageError with a user-facing message."""
        if kind not in KINDS:
            raise ImageError(f"unknown kind {kind!r}")
        rgb = self._fit(kind, load_image_bytes(data, self.limits))
        uid = UPLOAD_PREFIX + hashlib.sha256(data).hexdigest()[:_HASH_CHARS]
        path = self._upload_dir / f"{kind}-{uid}.png"
        Image.fromarray(rgb).save(path)
        item = Item(uid, kind, path, False)
        with self._lock:
            ups = self._uploads[kind]
            ups[uid] = item
            ups.move_to_end(uid)
            self._rgb[(kind, uid)] = rgb
            while len(ups) > self.max_uploads:
                old, _ = ups.popitem(last=False)
                self._rgb.pop((kind, old), None)
        return item

    def get(self, kind: str, item_id: str | None) -> np.ndarray:
        """Fitted RGB for an id; raises ImageError('unknown ...') for ids we don't have."""
        if not item_id:
            raise ImageError(f"no {kind} selected")
        key = (kind, str(item_id))
        with self._lock:
            if key in self._rgb:
                return self._rgb[key]
        item = next((i for i in self.bundled(kind) if i.id == item_id), None)
        if item is None:
            raise ImageError(f"unknown {kind} id {item_id!r}")
        rgb = self._fit(kind, load_image_bytes(item.path.read_bytes(), self.limits))
        with self._lock:
            self._rgb[key] = rgb
        return rgb

    def default_id(self, kind: str) -> str | None:
        items = self.items(kind)
        return items[0].id if items else None
