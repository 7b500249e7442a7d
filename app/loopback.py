"""Loopback tools: an in-process aiortc viewer and a uvicorn server thread (tests, smoke and load runs).

`python -m app.loopback --clients 3 --seconds 10` measures delivered fps per session with the tiny
random-weights engine (or `--checkpoint DIR`) on 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

LOOPBACK = "127.0.0.1"


def use_loopback_ice_only() -> None:
    """Make aioice offer only 127.0.0.1 host candidates (no other interface, no STUN)."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [LOOPBACK]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class Received:
    t: float  # perf_counter at decode
    pts: int
    image: np.ndarray | None


@dataclass
class LoopbackViewer:
    """recvonly aiortc peer that signals through the app's HTTP API."""

    http: object  # httpx.AsyncClient bound to the app
    keep_images: bool = True
    frames: list[Received] = field(default_factory=list)
    sid: str | None = None
    response: dict | None = None
    status_code: int | None = None

    def __post_init__(self):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._task: asyncio.Task | None = None
        self.t_offer: float | None = None

    async def start(self, **params) -> dict:
        self.pc.addTransceiver("video", direction="recvonly")

        @self.pc.on("track")
        def _on_track(track):
            self._task = asyncio.ensure_future(self._pump(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.t_offer = time.perf_counter()
        body = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type, **params}
        r = await self.http.post("/api/offer", json=body)
        self.status_code, self.response = r.status_code, r.json()
        if r.status_code != 200:
            await self.pc.close()
            return self.response
        self.sid = self.response["sid"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.response["sdp"], type=self.response["type"]))
        return self.response

    async def _pump(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            img = frame.to_ndarray(format="rgb24") if self.keep_images else None
            self.frames.append(Received(time.perf_counter(), int(frame.pts or 0), img))

    async def wait_frames(self, n: int, timeout: float) -> int:
        deadline = time.perf_counter() + timeout
        while len(self.frames) < n and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return len(self.frames)

    def fps(self, skip_s: float = 0.0) -> float:
        """Received frames per second (after skipping the first `skip_s` seconds)."""
        if len(self.frames) < 2:
            return 0.0
        t0 = self.frames[0].t + skip_s
        ts = [f.t for f in self.frames if f.t >= t0]
        return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0

    async def close(self) -> None:
        await self.pc.close()
        if self._task is not None:
            self._task.cancel()


class ServerThread:
    """uvicorn on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app, port: int | None = None, start_timeout_s: float = 60.0):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self.server.run, name="fc-uvicorn", daemon=True)
        self._start_timeout_s = start_timeout_s

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        deadline = time.perf_counter() + self._start_timeout_s
        while not self.server.started:
            if time.perf_counter() > deadline or not self._thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(self._start_timeout_s)


async def measure(app, clients: int, seconds: float, params: dict) -> list[dict]:
    """Open `clients` viewers at once; return per-viewer status and delivered fps."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fc.local") as http:
        viewers = [LoopbackViewer(http, keep_images=False) for _ in range(clients)]
        await asyncio.gather(*(v.start(**params) for v in viewers))
        await asyncio.sleep(seconds)
        out = []
        for i, v in enumerate(viewers):
            stats = (await http.get(f"/api/stats/{v.sid}")).json() if v.sid else None
            out.append({"client": i, "status": v.status_code, "error": (v.response or {}).get("error"),
                        "frames": len(v.frames), "received_fps_incl_repeats": round(v.fps(skip_s=1.0), 2),
                        "distinct_frames": stats and stats["frames_delivered"],
                        "delivered_fps": stats and round(stats["frames_delivered"] / seconds, 2),
                        "repeats": stats and stats["repeats"], "ttff_s": stats and stats["ttff_s"]})
        for v in viewers:
            await v.close()
        return out


def main(argv=None) -> None:
    import argparse
    import json

    from fashionchameleon.stream import StreamingEngine

    from .server import build_app

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--max-sessions", type=int, default=None)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    use_loopback_ice_only()
    engine = (StreamingEngine.from_checkpoint(a.checkpoint, device=a.device) if a.checkpoint
              else StreamingEngine.from_preset(a.preset, device=a.device, random_weights=True))
    app = build_app(engine, max_sessions=a.max_sessions or a.clients, with_ui=False)

    async def run():
        try:
            return await measure(app, a.clients, a.seconds, {})
        finally:
            await app.state.manager.shutdown()

    print(json.dumps(asyncio.run(run()), indent=2))


if __name__ == "__main__":
    main()
