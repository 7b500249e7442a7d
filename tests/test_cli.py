"""The CLI entry points run end to end on CPU: bench JSON keys, render MP4 + timeline, bad arguments."""

import json

import cv2
import numpy as np
import pytest

from fashionchameleon.cli import main
from fashionchameleon.stream import StreamingEngine
from fashionchameleon.video import read_video

BENCH_KEYS = {"fps", "ttff_s", "swap_latency_s", "chunk_ms", "stage_ms", "peak_mem_bytes", "kv_cache_bytes",
              "resolution", "frames", "device", "preset"}


def test_bench_writes_required_keys(tmp_path):
    out = tmp_path / "out.json"
    main(["bench", "--preset", "test", "--device", "cpu", "--frames", "60", "--swap-every", "24",
          "--random-weights", "--json", str(out), "--baseline", "teacher", "--baseline-steps", "2",
          "--baseline-frames", "9", "--frame-interpolation", "flow"])
    res = json.loads(out.read_text())
    assert BENCH_KEYS <= res.keys()
    assert res["fps"] > 0 and res["frames"] >= 60 and res["swaps"] >= 2
    assert {"denoise_0", "cache_write", "decode", "encode", "reschedule"} <= res["stage_ms"].keys()
    assert res["frame_interpolation"] == "flow" and "interpolate" in res["stage_ms"]  # timed, inside the FPS
    assert res["baseline_fps"] > 0 and res["speedup"] == pytest.approx(res["fps"] / res["baseline_fps"])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    StreamingEngine.from_preset("test", seed=0).save(d / "c")
    return d / "c"


def _png(path, color, size=(40, 30)):
    img = np.zeros((*size, 3), np.uint8)
    img[:] = color
    cv2.imwrite(str(path), img)
    return str(path)


def test_render_writes_playable_mp4_and_timeline(tmp_path, ckpt):
    ref = _png(tmp_path / "ref.png", (30, 90, 200))
    g1 = _png(tmp_path / "g1.png", (0, 0, 255))
    g2 = _png(tmp_path / "g2.png", (255, 0, 0))
    out = tmp_path / "clip.mp4"
    assert main(["render", "--reference", ref, "--garment", g1, "--garment", g2, "--swap-at", "20", "--frames",
                 "40", "--seed", "3", "--checkpoint", str(ckpt), "--out", str(out),
                 "--sheet", str(tmp_path / "sheet.png"), "--garment-bias", "0.5",
                 "--garment-key-scale", "1.5", "--garment-key-scale-from-layer", "1",
                 "--frame-interpolation", "flow"]) == 0
    frames = read_video(out)
    assert frames.shape[0] == 40
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 2 * frames.shape[1]  # a row per garment segment
    timeline = json.loads(out.with_suffix(".json").read_text())
    assert [s["frame"] for s in timeline["swaps"]] == [0, 20] and timeline["seed"] == 3
    assert timeline["applied"][-1]["garment"] == g2 and timeline["applied"][-1]["frame"] >= 20
    assert timeline["garment_attention_bias"] == 0.5  # the overrides reached the stream and are recorded
    assert timeline["garment_key_scale"] == 1.5 and timeline["garment_key_scale_from_layer"] == 1
    assert timeline["frame_interpolation"] == "flow"  # the test preset's default is "none"
    assert timeline["checkpoint"] == str(ckpt)  # outside the working directory: kept as given


def test_timeline_checkpoint_is_relative_inside_the_working_directory(tmp_path, monkeypatch):
    """A checkpoint under the working directory is written relative to it (no machine-specific absolute path in
    shared timelines and bench results); pseudo-paths such as "random:tiny" pass through."""
    from fashionchameleon.timeline import Timeline, portable_path

    (tmp_path / "ckpts" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    t = Timeline(fps=24, frames=8, seed=0, checkpoint=str(tmp_path / "ckpts" / "m"))
    assert t.to_dict()["checkpoint"] == "ckpts/m"
    assert Timeline.from_dict(t.to_dict()).checkpoint == "ckpts/m"
    assert portable_path("random:tiny") == "random:tiny" and portable_path(None) is None
    assert portable_path("/elsewhere/ckpt") == "/elsewhere/ckpt"


def test_render_rejects_bad_arguments(tmp_path, ckpt):
    g = _png(tmp_path / "g.png", (1, 2, 3))
    with pytest.raises(SystemExit):
        main(["render", "--reference", g, "--garment", g, "--garment", g, "--frames", "10", "--out",
              str(tmp_path / "x.mp4"), "--checkpoint", str(ckpt)])  # missing --swap-at
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="not a readable image"):
        main(["render", "--reference", str(tmp_path / "bad.png"), "--garment", g, "--frames", "10", "--out",
              str(tmp_path / "x.mp4"), "--checkpoint", str(ckpt)])


def test_render_rejects_a_bad_garment_bias(tmp_path, ckpt, capsys):
    g = _png(tmp_path / "g.png", (1, 2, 3))
    rc = main(["render", "--reference", g, "--garment", g, "--frames", "10", "--out", str(tmp_path / "x.mp4"),
               "--checkpoint", str(ckpt), "--garment-bias", "inf"])
    assert rc == 2 and "garment_attention_bias must be finite" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
    rc = main(["render", "--reference", g, "--garment", g, "--frames", "10", "--out", str(tmp_path / "x.mp4"),
               "--checkpoint", str(ckpt), "--garment-key-scale", "-1"])
    assert rc == 2 and "garment_key_scale must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
    rc = main(["render", "--reference", g, "--garment", g, "--frames", "10", "--out", str(tmp_path / "x.mp4"),
               "--checkpoint", str(ckpt), "--frame-interpolation", "rife"])
    assert rc == 2 and "frame_interpolation must be one of" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_unknown_command_prints_usage(capsys):
    assert main(["frobnicate"]) == 2
    assert "usage" in capsys.readouterr().out


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    g = _png(tmp_path / "g.png", (1, 2, 3))
    rc = main(["render", "--reference", g, "--garment", g, "--frames", "10", "--out", str(tmp_path / "x.mp4"),
               "--checkpoint", str(tmp_path / "nope")])
    assert rc == 2 and "checkpoint directory not found" in capsys.readouterr().err
