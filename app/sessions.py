"""Session manager: WebRTC connection <-> engine session <-> worker, swaps, stats, recordings."""
from __future__ import annotations

import asyncio
import logging
import queue
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from .catalog import Catalog
from .config import AppConfig
from .recorder import Recorder
from fashionchameleon.timeline import Swap, SwapScheduler, Timeline, TimelineError, parse_schedule
from .webrtc import DeliveryStats, EngineVideoTrack, ice_servers_config
from .worker import GenerationWorker, StreamHandle, SwapRequest

log = logging.getLogger(__name__)
CLOSED_STATES = ("failed", "closed")


class BusyError(RuntimeError):
    pass


class NotFoundError(KeyError):
    pass


class BadRequest(ValueError):
    pass


def engine_chunk_frames(engine, fallback: int) -> int:
    """Most video frames one `session.step()` returns (latent chunk x VAE temporal factor)."""
    preset = getattr(engine, "preset", None)
    try:
        return int(preset.stream.chunk_frames * preset.temporal_factor)
    except AttributeError:
        return fallback


@dataclass
class LiveSession:
    sid: str
    handle: StreamHandle
    pc: RTCPeerConnection
    delivery: DeliveryStats
    reference: str
    history: list[Swap] = field(default_factory=list)  # first produced frame wearing each garment
    recorder: Recorder | None = None
    swap_requests: int = 0
    tasks: list[asyncio.Task] = field(default_factory=list)


class SessionManager:
    def __init__(self, engine, catalog: Catalog, cfg: AppConfig, checkpoint: str | None = None):
        self.engine, self.catalog, self.cfg, self.checkpoint = engine, catalog, cfg, checkpoint
        self.fps = float(engine.fps)
        self.chunk_frames = engine_chunk_frames(engine, cfg.fallback_chunk_frames)
        self.worker = GenerationWorker(self.chunk_frames, cfg.worker_idle_wait_s)
        self.worker.start()
        self.rtc_config = ice_servers_config(cfg.ice_servers)
        self.record_dir = Path(cfg.record_dir or tempfile.mkdtemp(prefix="fc_recordings_"))
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self._sessions: dict[str, LiveSession] = {}
        self._recordings: dict[str, tuple[Path, Path]] = {}
        self.closed_handles: list[StreamHandle] = []  # for introspection (tests, /api/health)

    # ---- lifecycle ----
    @property
    def count(self) -> int:
        return len(self._sessions)

    def get(self, sid: str) -> LiveSession:
        live = self._sessions.get(sid)
        if live is None:
            raise NotFoundError(sid)
        return live

    def _resolve_schedule(self, schedule) -> list[Swap]:
        if not schedule:
            return []
        try:
            if isinstance(schedule, str):
                swaps = parse_schedule(schedule, self.fps)
            elif isinstance(schedule, dict):
                swaps = Timeline.from_dict(schedule).swaps
            else:
                swaps = Timeline.from_dict({"fps": self.fps, "swaps": list(schedule)}).swaps
        except (TimelineError, TypeError, ValueError) as e:
            raise BadRequest(f"timeline: {e}") from None
        if len(swaps) > self.cfg.max_pending_schedule:
            raise BadRequest(f"timeline: at most {self.cfg.max_pending_schedule} swaps")
        for s in swaps:
            self.catalog.get("garment", s.garment)  # ImageError for unknown ids
        return swaps

    async def open(self, sdp: str, type_: str, reference: str | None, garment: str | None, prompt: str | None = None,
                   seed: int | None = None, schedule=None) -> dict:
        if self.count >= self.cfg.max_sessions:
            raise BusyError(f"all {self.cfg.max_sessions} streaming slots are in use, try again later")
        if type_ != "offer" or not isinstance(sdp, str) or "m=video" not in sdp:
            raise BadRequest("expected an SDP offer with a video m-line")
        reference = reference or self.catalog.default_id("reference")
        garment = garment or self.catalog.default_id("garment")
        ref_rgb = self.catalog.get("reference", reference)
        garment_rgb = self.catalog.get("garment", garment)
        swaps = self._resolve_schedule(schedule)
        try:
            seed = int(self.cfg.default_seed if seed is None or seed == "" else seed)
        except (TypeError, ValueError):
            raise BadRequest("seed must be an integer") from None
        prompt = self.cfg.default_prompt if prompt is None else str(prompt)
        scheduler = SwapScheduler([s for s in swaps if s.frame > 0])
        start_swap = next((s for s in swaps if s.frame == 0), None)
        if start_swap is not None:
            garment, garment_rgb = start_swap.garment, self.catalog.get("garment", start_swap.garment)

        sid = uuid.uuid4().hex
        frames: queue.Queue = queue.Queue(maxsize=int(self.cfg.queue_chunks * self.chunk_frames))
        policy = self.cfg.policy
        handle = StreamHandle(
            sid=sid, new_session=lambda: self.engine.new_session(policy=policy), reference_rgb=ref_rgb,
            garment_rgb=garment_rgb, garment_id=garment, prompt=prompt, seed=seed, frames=frames,
            scheduler=scheduler, resolve_garment=lambda g: self.catalog.get("garment", g),
        )
        delivery = DeliveryStats(self.cfg.stats_window_s, self.cfg.sent_log_frames)
        pc = RTCPeerConnection(self.rtc_config)
        live = LiveSession(sid, handle, pc, delivery, reference)
        self._sessions[sid] = live  # reserve the slot before any await

        def on_produced(frame):  # worker thread
            if not live.history or live.history[-1].garment != frame.garment_id:
                live.history.append(Swap(int(frame.index), str(frame.garment_id)))

        handle.taps.append(on_produced)
        track = EngineVideoTrack(frames, self.fps, self.engine.height, self.engine.width, self.cfg.placeholder_rgb,
                                 delivery, on_new=lambda f: self._on_delivered(live, f), on_space=self.worker.wake)

        @pc.on("connectionstatechange")
        async def _on_state():
            if pc.connectionState in CLOSED_STATES:
                await self.close(sid)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type_))
            pc.addTrack(track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            await self.close(sid)
            raise BadRequest(f"could not negotiate WebRTC: {e}") from None
        if sid not in self._sessions:  # closed while negotiating
            raise BadRequest("connection closed during negotiation")
        self.worker.add(handle)
        live.tasks.append(asyncio.ensure_future(self._connect_watchdog(sid)))
        return {"sid": sid, "sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                "garment": garment, "reference": reference, "fps": self.fps}

    async def _connect_watchdog(self, sid: str) -> None:
        await asyncio.sleep(self.cfg.connect_timeout_s)
        live = self._sessions.get(sid)
        if live is not None and live.pc.connectionState != "connected":
            log.info("session %s never connected; closing", sid)
            await self.close(sid)

    def _on_delivered(self, live: LiveSession, frame: Any) -> None:
        h = live.handle
        if (h.t_requested is not None and frame.garment_id == h.requested_garment
                and frame.garment_id != live.delivery.current_garment):
            live.delivery.swap_latencies.append(time.perf_counter() - h.t_requested)
            h.t_requested = None
        if live.recorder is not None:
            live.recorder.add(frame)

    async def close(self, sid: str) -> bool:
        live = self._sessions.pop(sid, None)
        if live is None:
            return False
        self.worker.remove(live.handle)
        self.closed_handles.append(live.handle)
        for t in live.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        if live.recorder is not None:
            await self._finish_recording(live)
        await live.pc.close()
        return True

    async def shutdown(self) -> None:
        for sid in list(self._sessions):
            await self.close(sid)
        await asyncio.to_thread(self.worker.stop, self.cfg.connect_timeout_s)

    # ---- controls ----
    def swap(self, sid: str, garment: str) -> dict:
        live = self.get(sid)
        rgb = self.catalog.get("garment", garment)
        live.swap_requests += 1
        live.handle.request_swap(SwapRequest(str(garment), rgb, time.perf_counter()))
        self.worker.wake()
        return {"sid": sid, "pending": str(garment), "requests": live.swap_requests}

    def stats(self, sid: str) -> dict:
        live = self.get(sid)
        h, d = live.handle, live.delivery
        now = time.perf_counter()
        pending = h.pending.garment_id if h.pending is not None else None
        if pending is None and h.requested_garment not in (None, d.current_garment) and d.current_garment is not None:
            pending = h.requested_garment
        return {
            "sid": sid,
            "connection": live.pc.connectionState,
            "delivered_fps": round(d.fps(now), 2),
            "target_fps": self.fps,
            "frames_delivered": d.new,
            "frames_sent": d.sent,
            "repeats": d.repeats,
            "ttff_s": None if d.t_first_new is None else round(d.t_first_new - h.t_created, 3),
            "last_swap_latency_s": round(d.swap_latencies[-1], 3) if d.swap_latencies else None,
            "current_garment": d.current_garment,
            "pending_garment": pending,
            "swap_requests": live.swap_requests,
            "swap_calls": h.swap_calls,
            "queue": h.frames.qsize(),
            "produced": h.produced,
            "recording": live.recorder is not None,
            "recorded_frames": live.recorder.frames if live.recorder else 0,
            "scheduled": [s.to_dict(self.fps) for s in h.scheduler.remaining],
            "engine": h.engine_stats,
            "error": h.error,
        }

    # ---- recording ----
    def record_start(self, sid: str) -> dict:
        live = self.get(sid)
        if live.recorder is not None:
            raise BadRequest("already recording")
        cfg = self.cfg
        path = self.record_dir / f"fc-{sid[:8]}-{int(time.time())}.mp4"
        meta = {"seed": live.handle.seed, "prompt": live.handle.prompt, "reference": live.reference,
                "policy": cfg.policy, "checkpoint": self.checkpoint}
        live.recorder = Recorder(path, self.fps, meta, cfg.record_codec, cfg.record_pix_fmt, cfg.record_crf,
                                 cfg.record_preset, cfg.record_queue_frames)
        return {"sid": sid, "recording": True}

    async def record_stop(self, sid: str) -> dict:
        live = self.get(sid)
        if live.recorder is None:
            raise BadRequest("not recording")
        return await self._finish_recording(live)

    async def _finish_recording(self, live: LiveSession) -> dict:
        rec, live.recorder = live.recorder, None
        mp4, js = await asyncio.to_thread(rec.stop, list(live.history))
        rid = mp4.stem
        self._recordings[rid] = (mp4, js)
        return {"id": rid, "mp4": f"/api/recordings/{rid}.mp4", "json": f"/api/recordings/{rid}.json",
                "frames": rec.frames, "dropped": rec.dropped}

    def recording_path(self, rid: str, ext: str) -> Path:
        paths = self._recordings.get(rid)
        if paths is None or ext not in ("mp4", "json"):
            raise NotFoundError(rid)
        return paths[0] if ext == "mp4" else paths[1]
