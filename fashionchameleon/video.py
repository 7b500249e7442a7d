"""H.264 MP4 writing with PyAV (browser-playable: yuv420p, even dimensions, faststart)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np


class MP4Writer:
    """Incremental writer: `write(frame_rgb)` per frame, `close()` at the end."""

    def __init__(self, path: str | Path, fps: float, crf: int = 20, preset: str = "veryfast",
                 codec: str = "libx264", pix_fmt: str = "yuv420p"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        import av  # only the MP4 paths need PyAV; training machines may lack it

        self._av = av
        self._container = av.open(str(self.path), mode="w", options={"movflags": "faststart"})
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        self._stream.pix_fmt = pix_fmt
        self._stream.options = {"crf": str(crf), "preset": preset}
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self._size is None:
            # yuv420p needs even sizes; pad by one pixel rather than failing
            self._size = (h + h % 2, w + w % 2)
            self._stream.height, self._stream.width = self._size
        if (h, w) != self._size:
            frame = np.pad(frame, ((0, self._size[0] - h), (0, self._size[1] - w), (0, 0)), mode="edge")
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames  # in 1/fps units: the codec time base follows the stream rate
        for pkt in self._stream.encode(vf):
            self._container.mux(pkt)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for pkt in self._stream.encode():
            self._container.mux(pkt)
        self._container.close()
        self._container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video as T x H x W x 3 uint8 RGB."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# ------------------------------------------------------------------------------------------------ contact sheets
def label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(out, text, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contact_row(reference: np.ndarray, garment: np.ndarray, video: np.ndarray, cols: int,
                tag: str = "gen") -> np.ndarray:
    idx = np.linspace(0, len(video) - 1, cols).round().astype(int)
    tiles = [label(reference, "reference"), label(garment, "garment")]
    tiles += [label(video[i], f"{tag} t={i}") for i in idx]
    sep = np.full((reference.shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=1)


def save_sheet(path: str | Path, rows: list[np.ndarray]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    cv2.imwrite(str(path), np.concatenate(rows, axis=0)[:, :, ::-1])
    return path


def tile_row(tiles: list[tuple[np.ndarray, str]]) -> np.ndarray:
    """Labelled tiles side by side, 2-px white gaps."""
    sep = np.full((tiles[0][0].shape[0], 2, 3), 255, np.uint8)
    parts = [x for img, text in tiles for x in (label(img, text), sep)][:-1]
    return np.concatenate(parts, axis=1)


def swap_sheet(reference: np.ndarray, garments: list[np.ndarray], frames: np.ndarray, starts: list[int],
               cols: int = 6) -> list[np.ndarray]:
    """Rows of a garment-swap clip: per segment (garment k worn from `starts[k]`), the frame just before it
    (or the reference), garment k, then `cols` frames spread over the segment."""
    rows = []
    bounds = list(starts) + [len(frames)]
    for k, g in enumerate(garments):
        a, b = bounds[k], bounds[k + 1]
        if b <= a:
            continue
        lead = (reference, "reference") if k == 0 else (frames[a - 1], f"before f={a - 1}")
        idx = np.unique(np.linspace(a, b - 1, cols).round().astype(int))
        rows.append(tile_row([lead, (g, f"garment {k + 1}")] + [(frames[i], f"f={i}") for i in idx]))
    return rows
