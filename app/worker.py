"""Generation worker: one thread per device stepping every live session chunk by chunk, round-robin."""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fashionchameleon.timeline import SwapScheduler

log = logging.getLogger(__name__)


@dataclass
class SwapRequest:
    garment_id: str
    rgb: np.ndarray
    t_request: float  # time.perf_counter() when the server received it


@dataclass
class StreamHandle:
    """Everything the worker and the WebRTC track share about one session."""

    sid: str
    new_session: Callable[[], Any]  # -> fashionchameleon.stream.StreamingSession, called on the worker thread
    reference_rgb: np.ndarray
    garment_rgb: np.ndarray
    garment_id: str
    prompt: str
    seed: int
    frames: queue.Queue
    scheduler: SwapScheduler = field(default_factory=SwapScheduler)
    resolve_garment: Callable[[str], np.ndarray] | None = None  # for scheduled swaps
    t_created: float = field(default_factory=time.perf_counter)
    # worker-thread state
    session: Any = None
    produced: int = 0
    swap_calls: int = 0
    engine_stats: dict = field(default_factory=dict)
    error: str | None = None
    requested_garment: str | None = None  # last id handed to request_swap
    t_requested: float | None = None
    closing: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    t_closed: float | None = None
    taps: list[Callable[[Any], None]] = field(default_factory=list)  # called per produced frame (worker thread)
    _pending: SwapRequest | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request_swap(self, req: SwapRequest) -> None:
        """Coalescing: only the newest request survives until the worker's next chunk."""
        with self._lock:
            self._pending = req

    def take_pending(self) -> SwapRequest | None:
        with self._lock:
            req, self._pending = self._pending, None
            return req

    @property
    def pending(self) -> SwapRequest | None:
        return self._pending


class GenerationWorker(threading.Thread):
    def __init__(self, chunk_frames: int, idle_wait_s: float, name: str = "fc-generation"):
        super().__init__(name=name, daemon=True)
        self.chunk_frames = chunk_frames  # most frames one step() can return
        self.idle_wait_s = idle_wait_s
        self._handles: list[StreamHandle] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._halt = threading.Event()

    # ---- called from the event loop ----
    def add(self, h: StreamHandle) -> None:
        with self._lock:
            self._handles.append(h)
        self.wake()

    def remove(self, h: StreamHandle) -> None:
        h.closing.set()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        self._halt.set()
        self.wake()
        self.join(timeout)

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._handles)

    # ---- worker thread ----
    def run(self) -> None:
        while not self._halt.is_set():
            self._reap()
            with self._lock:
                handles = list(self._handles)
            worked = False
            for h in handles:
                self._reap()
                if h.closing.is_set():
                    continue
                if h.frames.maxsize - h.frames.qsize() >= self.chunk_frames:
                    self._step(h)
                    worked = True
            if not worked:
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()
        with self._lock:
            for h in self._handles:
                h.closing.set()
        self._reap()

    def _reap(self) -> None:
        with self._lock:
            done = [h for h in self._handles if h.closing.is_set()]
            self._handles = [h for h in self._handles if not h.closing.is_set()]
        for h in done:
            try:
                if h.session is not None:
                    h.session.close()
                    h.engine_stats = dict(h.session.stats())
            except Exception:  # never let one session take the worker down
                log.exception("closing session %s", h.sid)
            h.session = None
            h.t_closed = time.perf_counter()
            h.closed.set()

    def _step(self, h: StreamHandle) -> None:
        try:
            if h.session is None:
                h.session = h.new_session()
                h.session.begin(h.reference_rgb, h.garment_rgb, prompt=h.prompt, seed=h.seed, garment_id=h.garment_id)
                h.requested_garment = h.garment_id
            # at most one request_swap per chunk: a due scheduled swap first, a click stays pending
            scheduled = h.scheduler.due(h.produced)
            req = None
            if scheduled is not None and h.resolve_garment is not None:
                try:
                    req = SwapRequest(scheduled.garment, h.resolve_garment(scheduled.garment), time.perf_counter())
                except Exception:
                    log.warning("session %s: scheduled garment %r unavailable", h.sid, scheduled.garment)
            if req is None:
                req = h.take_pending()
            if req is not None and req.garment_id != h.requested_garment:
                h.session.request_swap(req.rgb, garment_id=req.garment_id)
                h.swap_calls += 1
                h.requested_garment, h.t_requested = req.garment_id, req.t_request
            for frame in h.session.step():
                h.produced += 1
                for tap in h.taps:
                    tap(frame)
                h.frames.put_nowait(frame)
            h.engine_stats = dict(h.session.stats())
        except Exception as e:
            log.exception("session %s failed", h.sid)
            h.error = f"generation error: {e}"
            h.closing.set()
