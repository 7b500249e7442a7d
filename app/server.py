"""One process, one port: FastAPI (WebRTC signalling + control API) with the Gradio UI mounted at /."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402

from fashionchameleon.reschedule import POLICIES, parse_policy  # noqa: E402

from .catalog import Catalog  # noqa: E402
from .config import STATIC_DIR, STATIC_URL, AppConfig  # noqa: E402
from .images import ImageError  # noqa: E402
from .sessions import BadRequest, BusyError, NotFoundError, SessionManager  # noqa: E402
from .webrtc import include_loopback_candidates, parse_ice_servers  # noqa: E402

log = logging.getLogger(__name__)
# multipart framing on top of the image itself
UPLOAD_OVERHEAD_BYTES = 64 * 1024


def _err(status: int, code: str, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


async def _json_body(request: Request) -> dict:
    """JSON from any content type (navigator.sendBeacon posts text/plain)."""
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def _read_upload(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + UPLOAD_OVERHEAD_BYTES:
        raise ImageError(f"file too large (max {limit / 2**20:.0f} MB)")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        f = form.get("file")
        if f is None or isinstance(f, str):
            raise ImageError("multipart upload needs a 'file' field")
        return await f.read(limit + 1)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            break
    return bytes(data)


def build_app(engine, max_sessions: int | None = None, config: AppConfig | None = None,
              checkpoint: str | None = None, ice_servers: str | tuple | None = None, with_ui: bool = True) -> FastAPI:
    """ASGI app serving `engine` (a fashionchameleon.stream.StreamingEngine or anything with its API)."""
    cfg = config or AppConfig()
    parse_policy(cfg.policy)  # a typo fails at start, not when the first browser connects
    if max_sessions is not None:
        cfg = dataclasses.replace(cfg, max_sessions=int(max_sessions))
    if ice_servers is not None:
        servers = parse_ice_servers(ice_servers) if isinstance(ice_servers, str) else tuple(ice_servers)
        cfg = dataclasses.replace(cfg, ice_servers=servers)
    include_loopback_candidates()
    catalog = Catalog(engine.height, engine.width, cfg.references_dir, cfg.garments_dir, cfg.images, cfg.max_uploads)
    checkpoint = checkpoint or getattr(engine, "checkpoint", None)
    manager = SessionManager(engine, catalog, cfg, None if checkpoint is None else str(checkpoint))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await manager.shutdown()

    app = FastAPI(title="FashionChameleon", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.manager, app.state.catalog, app.state.config = manager, catalog, cfg

    @app.exception_handler(BusyError)
    async def _busy(_, e):
        return _err(503, "busy", f"{e}", max_sessions=cfg.max_sessions)

    @app.exception_handler(BadRequest)
    async def _bad(_, e):
        return _err(400, "bad_request", str(e))

    @app.exception_handler(ImageError)
    async def _bad_image(_, e):
        return _err(400, "bad_image", str(e))

    @app.exception_handler(NotFoundError)
    async def _missing(_, e):
        return _err(404, "not_found", f"no such session or recording: {e.args[0] if e.args else ''}")

    @app.get("/api/config")
    async def api_config():
        return {"iceServers": list(cfg.ice_servers), "fps": manager.fps, "width": engine.width,
                "height": engine.height, "maxSessions": cfg.max_sessions, "chunkFrames": manager.chunk_frames,
                "statsPollMs": cfg.stats_poll_ms}

    @app.get("/api/health")
    async def api_health():
        return {"ok": manager.worker.is_alive(), "sessions": manager.count, "max_sessions": cfg.max_sessions,
                "worker_sessions": manager.worker.live}

    @app.get("/api/catalog")
    async def api_catalog():
        return {k + "s": [{"id": i.id, "bundled": i.bundled} for i in catalog.items(k)] for k in ("reference", "garment")}

    @app.post("/api/upload/{kind}")
    async def api_upload(kind: str, request: Request):
        data = await _read_upload(request, cfg.images.max_upload_bytes)
        item = catalog.add_upload(kind, data)
        return {"id": item.id, "kind": item.kind}

    @app.post("/api/offer")
    async def api_offer(request: Request):
        b = await _json_body(request)
        return await manager.open(b.get("sdp"), b.get("type"), b.get("reference"), b.get("garment"),
                                  b.get("prompt"), b.get("seed"), b.get("schedule"))

    @app.post("/api/swap")
    async def api_swap(request: Request):
        b = await _json_body(request)
        return manager.swap(str(b.get("sid")), b.get("garment"))

    @app.post("/api/stop")
    async def api_stop(request: Request):
        b = await _json_body(request)
        return {"stopped": await manager.close(str(b.get("sid")))}

    @app.get("/api/stats/{sid}")
    async def api_stats(sid: str):
        return manager.stats(sid)

    @app.post("/api/record/start")
    async def api_record_start(request: Request):
        return manager.record_start(str((await _json_body(request)).get("sid")))

    @app.post("/api/record/stop")
    async def api_record_stop(request: Request):
        return await manager.record_stop(str((await _json_body(request)).get("sid")))

    @app.get("/api/recordings/{rid}.{ext}")
    async def api_recording(rid: str, ext: str):
        path = manager.recording_path(rid, ext)
        media = "video/mp4" if ext == "mp4" else "application/json"
        return FileResponse(path, media_type=media, filename=path.name)

    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="fc-static")
    if with_ui:
        from .ui import mount_ui

        mount_ui(app, manager, catalog, cfg)
    return app


def _parse_extra(argv) -> dict:
    """Serve options beyond the shared CLI flags (`fashionchameleon serve ... --ice-servers ...`)."""
    import argparse

    from fashionchameleon.cli import add_stream_flags

    p = argparse.ArgumentParser(prog="fashionchameleon serve", add_help=False)
    p.add_argument("--ice-servers", default=None, help="TURN/STUN for the browser and server, e.g. "
                   "'turn:turn.example.com:3478?transport=udp|user|secret' (comma-separated or a JSON list)")
    p.add_argument("--policy", default=None, help="swap policy: " + ", ".join(sorted(POLICIES)) +
                   ", optionally with options, e.g. anchored:restore_after=2 (docs/RESCHEDULING.md)")
    p.add_argument("--random-weights", default=None, metavar="PRESET", help="serve an untrained preset (UI testing)")
    add_stream_flags(p)
    return vars(p.parse_args(list(argv or [])))


def load_engine(checkpoint, device: str, random_preset: str | None = None, garment_bias: float | None = None,
                garment_key_scale: float | None = None, garment_key_scale_from_layer: int | None = None,
                frame_interpolation: str | None = None):
    from fashionchameleon.configs import get_preset
    from fashionchameleon.stream import DEFAULT_CHECKPOINT, StreamingEngine

    stream = {"garment_attention_bias": garment_bias, "garment_key_scale": garment_key_scale,
              "garment_key_scale_from_layer": garment_key_scale_from_layer, "frame_interpolation": frame_interpolation}
    if not random_preset and checkpoint is None and not DEFAULT_CHECKPOINT.is_dir():
        log.warning("no checkpoint at %s: serving the untrained 'tiny' preset (random weights)", DEFAULT_CHECKPOINT)
        random_preset = "tiny"
    if random_preset:
        return StreamingEngine.from_preset(get_preset(random_preset).with_stream(**stream), device=device,
                                           random_weights=True)
    return StreamingEngine.from_checkpoint(None if checkpoint is None else str(checkpoint), device=device,
                                           stream=stream)


def serve(host: str = "127.0.0.1", port: int = 7860, checkpoint: str | Path | None = None, max_sessions: int = 2,
          device: str = "cpu", ice_servers: str | None = None, argv=None) -> None:
    """Entry point behind `fashionchameleon serve`; blocks until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    extra = _parse_extra(argv)
    ice_servers = ice_servers or extra["ice_servers"] or os.environ.get("FC_ICE_SERVERS")
    engine = load_engine(checkpoint, device, extra["random_weights"], extra["garment_bias"],
                         extra["garment_key_scale"], extra["garment_key_scale_from_layer"],
                         extra["frame_interpolation"])
    cfg = AppConfig(host=host, port=port)
    if extra["policy"]:
        cfg = dataclasses.replace(cfg, policy=extra["policy"])
    app = build_app(engine, max_sessions=max_sessions, config=cfg, checkpoint=checkpoint, ice_servers=ice_servers)
    log.info("FashionChameleon UI on http://%s:%d/", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
