"""Record the delivered stream (distinct frames, in order) to H.264 MP4 plus a JSON swap timeline."""
from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

from fashionchameleon.video import MP4Writer
from fashionchameleon.timeline import Swap, Timeline, save_timeline

log = logging.getLogger(__name__)
_STOP = object()


class Recorder:
    """`add(frame)` is non-blocking (called on the event loop); encoding runs in its own thread."""

    def __init__(self, mp4_path: Path, fps: float, meta: dict, codec: str, pix_fmt: str, crf: int,
                 preset: str, queue_frames: int):
        self.mp4_path, self.json_path = Path(mp4_path), Path(mp4_path).with_suffix(".json")
        self.fps, self.meta = fps, meta
        self._opts = dict(codec=codec, pix_fmt=pix_fmt, crf=crf, preset=preset)
        self._q: queue.Queue = queue.Queue(maxsize=queue_frames)
        self.frames = 0
        self.dropped = 0
        self.first_index: int | None = None
        self.last_index: int | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="fc-recorder", daemon=True)
        self._thread.start()

    def add(self, frame: Any) -> None:
        if self.first_index is None:
            self.first_index = frame.index
        self.last_index = frame.index
        try:
            self._q.put_nowait(frame.image)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        writer = None
        try:
            writer = MP4Writer(self.mp4_path, self.fps, crf=self._opts["crf"], preset=self._opts["preset"],
                               codec=self._opts["codec"], pix_fmt=self._opts["pix_fmt"])
            while True:
                img = self._q.get()
                if img is _STOP:
                    break
                writer.write(img)
                self.frames = writer.frames
        except Exception as e:
            log.exception("recording failed")
            self.error = str(e)
        finally:
            if writer is not None:
                writer.close()

    def stop(self, history: list[Swap], timeout: float | None = None) -> tuple[Path, Path]:
        """Flush, finalise the MP4 (blocking: call from a thread) and write the timeline JSON.

        `history`: the session's garment changes (first frame wearing each), starting at frame 0, so the
        JSON replays the whole session; `record_first_frame` says where the MP4 starts.
        """
        self._q.put(_STOP)
        self._thread.join(timeout)
        first = self.first_index or 0
        tl = Timeline(
            fps=self.fps, frames=0 if self.last_index is None else self.last_index + 1, seed=self.meta.get("seed", 0), prompt=self.meta.get("prompt", ""),
            reference=self.meta.get("reference"), policy=self.meta.get("policy"), checkpoint=self.meta.get("checkpoint"),
            swaps=[s for s in history if self.last_index is None or s.frame <= self.last_index],
            extra={"record_first_frame": first, "record_frames": self.frames, "dropped_frames": self.dropped},
        )
        save_timeline(tl, self.json_path)
        if self.error:
            raise RuntimeError(f"recording failed: {self.error}")
        return self.mp4_path, self.json_path
