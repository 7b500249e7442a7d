"""Bad inputs (uploads, ids, timelines) get clear 4xx messages; the server and live sessions keep running."""
import io
import json
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.config import AppConfig, ImageLimits
from app.images import ImageError, load_image_bytes
from app.loopback import LoopbackViewer
from app.server import build_app
from fashionchameleon.timeline import SwapScheduler, Timeline, TimelineError, parse_schedule
from fashionchameleon.stream import StreamingEngine

HUGE_SIDE = 20000


def png_bytes(w: int, h: int, rgb=(200, 50, 50), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), rgb if mode == "RGB" else rgb + (128,)).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A small PNG that claims w x h pixels: must be rejected from the header, before any decode."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(w * 3 + 1))  # one row; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"%PDF-1.4 definitely not an image", "not a readable image"),
    (png_header_only(HUGE_SIDE, HUGE_SIDE), "too large"),
    (png_header_only(8000, 8000), "too large"),
    (png_bytes(16, 16), "too small"),
    (png_bytes(500, 100), "aspect ratio"),
    (png_bytes(64, 64)[:-40], "corrupt"),
])
def test_load_image_rejects(data, needle):
    with pytest.raises(ImageError, match=needle):
        load_image_bytes(data)


def test_load_image_size_limit_and_rgba():
    with pytest.raises(ImageError, match="too large"):
        load_image_bytes(b"\0" * (ImageLimits().max_upload_bytes + 1))
    rgb = load_image_bytes(png_bytes(64, 48, (10, 20, 30), mode="RGBA"))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8


def test_timeline_roundtrip_and_schedule():
    tl = Timeline.from_dict({"fps": 24, "frames": 96, "seed": 1, "prompt": "p", "reference": "r", "policy": "x",
                             "checkpoint": None, "swaps": [{"frame": 48, "garment": "b"}, {"time_s": 0, "garment": "a"}],
                             "note": "kept"})
    assert [s.frame for s in tl.swaps] == [0, 48] and tl.start_garment == "a" and tl.garment_at(50) == "b"
    d = tl.to_dict()
    assert d["swaps"][1] == {"frame": 48, "time_s": 2.0, "garment": "b"} and d["note"] == "kept"
    assert Timeline.from_dict(d).to_dict() == d
    assert [(s.frame, s.garment) for s in parse_schedule("2 -> b\n# c\nat 4.5s: c\nframe 10 -> d", 24)] == [
        (10, "d"), (48, "b"), (108, "c")]
    sched = SwapScheduler(parse_schedule("1 -> a\n1.2 -> b\n3 -> c", 10))
    assert sched.due(5) is None and sched.due(12).garment == "b" and sched.due(30).garment == "c"
    for bad in ("2 b", "x -> y"):
        with pytest.raises(TimelineError):
            parse_schedule(bad, 24)
    with pytest.raises(TimelineError):
        Timeline.from_json("{not json")


@pytest.fixture(scope="module")
def engine():
    return StreamingEngine.from_preset("tiny", device="cpu", random_weights=True)


def test_unknown_policy_fails_at_start(engine):
    with pytest.raises(ValueError, match="unknown swap policy"):
        build_app(engine, config=AppConfig(policy="disentangel"), with_ui=False)
    with pytest.raises(ValueError, match="restore_after"):
        build_app(engine, config=AppConfig(policy="anchored:restore_after=-1"), with_ui=False)


@pytest.mark.usefixtures("loopback_ice")
async def test_bad_uploads_and_ids_do_not_disturb_a_live_session(engine, tmp_path):
    (tmp_path / "empty_refs").mkdir()
    (tmp_path / "garments").mkdir()
    Image.new("RGB", (96, 120), (30, 30, 220)).save(tmp_path / "garments" / "blue.png")
    cfg = AppConfig(references_dir=tmp_path / "empty_refs", garments_dir=tmp_path / "garments")
    app = build_app(engine, config=cfg, with_ui=False)
    manager = app.state.manager
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fc.test") as http:
            # no bundled reference: a clear message instead of a crash
            v0 = LoopbackViewer(http, keep_images=False)
            await v0.start(garment="blue")
            assert v0.status_code == 400 and "no reference" in v0.response["message"]

            r = await http.post("/api/upload/reference", files={"file": ("me.png", png_bytes(300, 400), "image/png")})
            assert r.status_code == 200, r.text
            ref_id = r.json()["id"]
            v = LoopbackViewer(http, keep_images=False)
            await v.start(reference=ref_id, garment="blue")
            assert v.status_code == 200
            assert await v.wait_frames(6, timeout=20)
            n0 = len(v.frames)

            bad_uploads = {
                "not an image": (b"hello world", "not a readable image"),
                "corrupt": (png_bytes(64, 64)[:-40], "corrupt"),
                "huge": (png_header_only(HUGE_SIDE, HUGE_SIDE), "too large"),
                "tiny": (png_bytes(20, 20), "too small"),
                "aspect": (png_bytes(1000, 200), "aspect"),
                "oversize": (b"\0" * (cfg.images.max_upload_bytes + 2**20), "too large"),
            }
            for name, (data, needle) in bad_uploads.items():
                r = await http.post("/api/upload/garment", files={"file": ("x.png", data, "image/png")})
                assert r.status_code == 400 and r.json()["error"] == "bad_image", name
                assert needle in r.json()["message"], (name, r.json())
            r = await http.post("/api/upload/garment", content=png_bytes(64, 64, (0, 200, 0)),
                                headers={"content-type": "image/png"})
            assert r.status_code == 200
            assert r.json()["id"] in [g["id"] for g in (await http.get("/api/catalog")).json()["garments"]]

            r = await http.post("/api/swap", json={"sid": v.sid, "garment": "no_such_garment"})
            assert r.status_code == 400 and "unknown garment" in r.json()["message"]
            r = await http.post("/api/swap", json={"sid": "nope", "garment": "blue"})
            assert r.status_code == 404
            r = await http.post("/api/offer", json={"sdp": "v=0", "type": "offer", "reference": ref_id, "garment": "blue"})
            assert r.status_code == 400
            r = await http.post("/api/offer", content=b"not json")
            assert r.status_code == 400 and r.json()["error"] == "bad_request"
            v2 = LoopbackViewer(http, keep_images=False)
            await v2.start(reference=ref_id, garment="blue", schedule="1 -> nowhere")
            assert v2.status_code == 400 and "unknown garment" in v2.response["message"]
            v3 = LoopbackViewer(http, keep_images=False)
            await v3.start(reference=ref_id, garment="blue", schedule="soon -> blue")
            assert v3.status_code == 400 and "timeline" in v3.response["message"]

            # the live session never noticed
            assert await v.wait_frames(n0 + 12, timeout=20) >= n0 + 12
            assert manager.stats(v.sid)["error"] is None and manager.count == 1
            await v.close()
    finally:
        await manager.shutdown()


def test_serve_garment_bias_reaches_the_engine():
    """`fashionchameleon serve --garment-bias X` / `--garment-key-scale Y` override the checkpoint's stream
    settings; a bad value is refused."""
    from app.server import _parse_extra, load_engine
    from fashionchameleon.stream import DEFAULT_CHECKPOINT

    assert _parse_extra(["--garment-bias", "0.5"])["garment_bias"] == 0.5 and _parse_extra([])["garment_bias"] is None
    assert load_engine(None, "cpu", "tiny", 0.5).stream_config.garment_attention_bias == 0.5
    assert load_engine(str(DEFAULT_CHECKPOINT), "cpu", None, 0.0).stream_config.garment_attention_bias == 0.0
    with pytest.raises(ValueError, match="garment_attention_bias must be finite"):
        load_engine(str(DEFAULT_CHECKPOINT), "cpu", None, float("nan"))
    assert _parse_extra(["--garment-key-scale", "1"])["garment_key_scale"] == 1.0
    assert load_engine(str(DEFAULT_CHECKPOINT), "cpu", None, None, 1.5).stream_config.garment_key_scale == 1.5
    shipped = json.loads((Path(DEFAULT_CHECKPOINT) / "preset.json").read_text())["stream"]["garment_key_scale"]
    assert load_engine(str(DEFAULT_CHECKPOINT), "cpu").stream_config.garment_key_scale == shipped  # no flag: kept
    with pytest.raises(ValueError, match="garment_key_scale"):
        load_engine(str(DEFAULT_CHECKPOINT), "cpu", None, None, 0.0)
    assert _parse_extra(["--garment-key-scale-from-layer", "2"])["garment_key_scale_from_layer"] == 2
    eng = load_engine(str(DEFAULT_CHECKPOINT), "cpu", None, None, None, 2)
    assert eng.stream_config.garment_key_scale_from_layer == 2 and eng.stream_config.garment_key_scale == shipped
    with pytest.raises(ValueError, match="garment_key_scale_from_layer"):
        load_engine(str(DEFAULT_CHECKPOINT), "cpu", None, None, None, -1)
    with pytest.raises(ValueError, match="outside the model's layers"):  # at load, not when a session starts
        load_engine(str(DEFAULT_CHECKPOINT), "cpu", None, None, 1.2, 99)


def test_with_stream_keeps_settings_given_as_none():
    """Unset flags reach `Preset.with_stream` as None and keep the preset's value; set ones replace it."""
    from fashionchameleon.configs import get_preset

    p = get_preset("tiny")
    q = p.with_stream(garment_attention_bias=None, garment_key_scale=1.5)
    assert q.stream.garment_attention_bias == p.stream.garment_attention_bias and q.stream.garment_key_scale == 1.5
