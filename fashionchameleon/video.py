"""H.264 MP4 writing with PyAV (browser-playable: yuv420p, even dimensions, faststart)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class MP4Writer:
    """Incremental writer: `write(frame_rgb)` per frame, `close()` at the end."""

    def __init__(self, path: str | Path, fps: float, crf: int = 20, preset: str = "veryfast",
                 codec: str = "libx264", pix_fmt: str = "yuv420p"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
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
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
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
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
