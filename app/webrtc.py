"""aiortc pieces: the paced engine track, delivery stats, ICE configuration."""
from __future__ import annotations

import asyncio
import fractions
import queue
import time
from collections import deque
from typing import Any, Callable

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, VideoStreamTrack

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
LOOPBACK = "127.0.0.1"


class DeliveryStats:
    """What the viewer actually gets (updated on the event loop by the track)."""

    def __init__(self, window_s: float, log_frames: int = 0):
        self.window_s = window_s
        # (pts, engine frame index or -1 for the placeholder) of recently sent frames, for diagnostics/tests
        self.sent_log: deque[tuple[int, int]] = deque(maxlen=log_frames)
        self.sent = 0  # frames handed to the encoder, repeats included
        self.new = 0  # distinct engine frames delivered
        self.repeats = 0  # underruns
        self.t_first_new: float | None = None
        self.t_first_sent: float | None = None
        self.current_garment: str | None = None
        self.last_index = -1
        self._times: deque[float] = deque()
        self.swap_latencies: list[float] = []

    def on_sent(self, now: float, frame: Any | None, is_new: bool, pts: int = 0) -> None:
        self.sent += 1
        if self.sent_log.maxlen:
            self.sent_log.append((pts, -1 if frame is None else int(frame.index)))
        if self.t_first_sent is None:
            self.t_first_sent = now
        if not is_new:
            self.repeats += 1
            return
        self.new += 1
        self.last_index = frame.index
        if self.t_first_new is None:
            self.t_first_new = now
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        self.current_garment = frame.garment_id

    def fps(self, now: float) -> float:
        times = [t for t in self._times if now - t <= self.window_s]
        if len(times) < 2:
            return 0.0
        span = max(now - times[0], times[-1] - times[0])
        return (len(times) - 1) / span if span > 0 else 0.0


class EngineVideoTrack(VideoStreamTrack):
    """Pops finished frames from a bounded queue; paces at `fps` on a 90 kHz clock; repeats the last frame on underrun."""

    kind = "video"

    def __init__(self, frames: queue.Queue, fps: float, height: int, width: int, placeholder_rgb,
                 stats: DeliveryStats, on_new: Callable[[Any], None] | None = None,
                 on_space: Callable[[], None] | None = None):
        super().__init__()
        self._frames, self._fps, self._stats = frames, float(fps), stats
        self._on_new, self._on_space = on_new, on_space
        self._last_image = np.empty((height, width, 3), np.uint8)
        self._last_image[:] = placeholder_rgb
        self._last_frame = None
        self._t0: float | None = None
        self._n = 0

    async def next_timestamp(self) -> tuple[int, fractions.Fraction]:
        if self._t0 is None:
            self._t0 = time.time()
        else:
            self._n += 1
            wait = self._t0 + self._n / self._fps - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        return int(round(self._n * VIDEO_CLOCK_RATE / self._fps)), VIDEO_TIME_BASE

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        try:
            frame = self._frames.get_nowait()
            is_new = True
        except queue.Empty:
            frame, is_new = self._last_frame, False
        if is_new:
            self._last_frame, self._last_image = frame, frame.image
            if self._on_space is not None:
                self._on_space()
            if self._on_new is not None:
                self._on_new(frame)
        self._stats.on_sent(time.perf_counter(), frame, is_new, pts)
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(self._last_image), format="rgb24")
        out.pts, out.time_base = pts, time_base
        return out


def ice_servers_config(ice_servers) -> RTCConfiguration:
    """Server-side RTCConfiguration; never falls back to aiortc's default public STUN server."""
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers
    ])


def parse_ice_servers(spec: str | None) -> tuple[dict, ...]:
    """`turn:host:3478?transport=udp|user|pass,stun:host:3478` -> RTCIceServer dicts (JSON list also accepted)."""
    import json

    if not spec:
        return ()
    spec = spec.strip()
    if spec.startswith("["):
        servers = json.loads(spec)
        return tuple({k: v for k, v in s.items() if k in ("urls", "username", "credential")} for s in servers)
    out = []
    for part in spec.split(","):
        fields = part.strip().split("|")
        s = {"urls": fields[0]}
        if len(fields) == 3:
            s["username"], s["credential"] = fields[1], fields[2]
        out.append(s)
    return tuple(out)


def include_loopback_candidates() -> None:
    """aioice skips 127.0.0.1; add it so a same-host browser connects even without other interfaces."""
    import aioice.ice

    orig = aioice.ice.get_host_addresses
    if getattr(orig, "_fc_loopback", False):
        return

    def get_host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        addrs = list(orig(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
        if use_ipv4 and LOOPBACK not in addrs:
            addrs.append(LOOPBACK)
        return addrs

    get_host_addresses._fc_loopback = True
    aioice.ice.get_host_addresses = get_host_addresses
