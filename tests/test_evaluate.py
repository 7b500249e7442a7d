"""Held-out benchmark: deterministic TEST-split cases, oracle sanity, and the --smoke CLI run."""

import json

import numpy as np
import pytest
import torch

from fashionchameleon import evaluate as E
from fashionchameleon.data.world import MannequinWorld, split_of_seed

torch.set_num_threads(1)


def test_build_cases_deterministic_and_held_out():
    cfg = E.BenchConfig()
    a, b = E.build_cases(20, seed=3), E.build_cases(20, seed=3)
    assert [vars(x) for x in a] == [vars(x) for x in b]
    assert [vars(x) for x in a] != [vars(x) for x in E.build_cases(20, seed=4)]
    for c in a:
        for s in (c.person, c.lower, c.background, c.motion, c.reference_garment, *c.garments):
            assert split_of_seed(s) == "test"
        assert cfg.garments[0] <= len(c.garments) <= max(cfg.garments[1], 3)
        assert len(c.swap_frames) == len(c.garments) - 1
        assert c.swap_frames == sorted(c.swap_frames) and 0 < c.swap_frames[0] and c.swap_frames[-1] < c.frames
        assert c.frames >= cfg.short_frames
        assert all(c.garments[i] != c.garments[i + 1] for i in range(len(c.garments) - 1))
    longs = [c for c in a if c.long]
    assert len(longs) == 20 // cfg.long_every
    assert all(c.frames >= 1000 and c.garments[0] == c.garments[-1] for c in longs)


def test_oracle_scores_are_sane():
    ev = E.Evaluator()
    case = E.build_cases(1, seed=0)[0]
    world = MannequinWorld()
    r = E.run_oracle(case, ev, (world.config.height, world.config.width), 0, E.BenchConfig(), world)
    segs = r["segments"]
    assert len(segs) == len(case.garments)
    assert all(s["success"] == 1.0 for s in segs)
    assert all(s["fidelity"] > 0.6 and s["non_target"] > 0.8 and s["identity"] > 0.8 for s in segs)
    assert all(s["body_iou"] > 0.85 for s in segs)  # the segmenter on GT renders vs the GT silhouettes
    assert all(c < 5.0 for c in r["continuity_kp"])


def test_body_iou_catches_a_body_the_colour_metrics_keep():
    """A torso-coloured haze over the whole person region: garment colour and identity colours survive in what the
    segmenter labels, but the silhouette no longer matches the ground truth."""
    import cv2

    ev = E.Evaluator()
    case = E.build_cases(1, seed=0, frames=24)[0]
    world = MannequinWorld()
    assets = E.CaseAssets(case, world, (world.config.height, world.config.width))
    frames, gt = assets.ground_truth()
    person = (gt["masks"] != 0).astype(np.uint8)
    grown = np.stack([cv2.dilate(m, np.ones((25, 25), np.uint8)) for m in person]).astype(bool)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 6) for f in frames])
    haze = np.where(grown[..., None], blurred, frames)
    ok = E.score_video(frames, list(case.swap_frames), assets, ev, 0, gt_masks=gt["masks"])
    bad = E.score_video(haze, list(case.swap_frames), assets, ev, 0, gt_masks=gt["masks"])
    iou_ok = np.mean([s["body_iou"] for s in ok["segments"]])
    iou_bad = np.mean([s["body_iou"] for s in bad["segments"]])
    assert iou_ok > 0.85 and iou_bad < iou_ok - 0.15


@pytest.mark.parametrize("policy", ["disentangle", "anchored:restore_after=1:restore_chunks=2"])
def test_smoke_main_writes_json(tmp_path, policy):
    out = tmp_path / "smoke.json"
    assert E.main(["--smoke", "--random-weights", "--policy", policy, "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    for k in ("policy", "checkpoint", "cases", "summary", "per_case", "evaluator", "config", "smoke"):
        assert k in res
    assert res["cases"] == E.BenchConfig().smoke_cases and res["smoke"] is True
    for k in E.SUMMARY_KEYS:
        assert set(res["summary"][k]) == {"mean", "std", "median", "n"}
    case = res["per_case"][0]
    assert case["frames"] == E.BenchConfig().smoke_frames
    assert len(case["actual_swaps"]) == len(case["requested_swaps"])
    # a swap applies at the next chunk boundary, never before it was requested
    assert all(d >= 0 for d in case["swap_delay_frames"])
    assert res["summary"]["fidelity"]["n"] > 0
    assert res["policy"] == policy


def test_run_case_records_actual_swap_frames():
    from fashionchameleon.stream import StreamingEngine

    eng = StreamingEngine.from_preset("tiny", random_weights=True)
    case = E.build_cases(1, seed=1, frames=48)[0]
    r = E.run_case(eng, case, "withdraw", E.Evaluator(), keep_frames=True)
    assert r["video"].shape[0] == 48
    chunk = E.settle_frames(eng)
    assert all(0 <= a - q < chunk for a, q in zip(r["actual_swaps"], case.swap_frames))
    assert r["restore_frames"] == [] and "continuity_kp_restore" not in r

    # anchored: each swap is followed by `restore_chunks` reference steps, one chunk apart, each scored; a newer
    # swap cuts the restore of the previous one short
    r = E.run_case(eng, case, "anchored:restore_after=1:restore_chunks=2", E.Evaluator())
    ends = r["actual_swaps"][1:] + [48]
    expect = [a + k * chunk for a, end in zip(r["actual_swaps"], ends) for k in (1, 2) if a + k * chunk < end]
    assert expect
    assert r["restore_frames"] == expect and len(r["continuity_kp_restore"]) == len(expect)


def _fake_result(policy, fid, succ, flick, cont=None, body=None):
    """The shape `evaluate()` writes, reduced to what the table reads."""
    def seg(i, success):
        return {"fidelity": fid[i], "success": success, **({} if body is None else {"body_iou": body[i]})}

    return {"policy": policy, "per_case": [
        {"case": i, "flicker": flick[i], "continuity_kp": [] if cont is None else cont[i],
         "segments": [seg(i, 1.0), seg(i, succ[i])]}
        for i in range(len(fid))]}


def test_eval_table_cache_keys_and_paired_differences(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from eval_table import paired_table, run_key

    # cache key: the full name and the weight contents, not the first word or the folder
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "transformer").mkdir(parents=True)
        (d / "transformer" / "w.safetensors").write_bytes(b"same bytes")
    assert run_key("DMD student τ=0.2", a) != run_key("DMD student τ=∞", a)
    assert run_key("x", a) == run_key("x", b)
    (b / "transformer" / "w.safetensors").write_bytes(b"retrained")
    assert run_key("x", a) != run_key("x", b)
    # the same weights streamed with other settings (garment bias) are another run
    from fashionchameleon.configs import get_preset

    (a / "preset.json").write_text(json.dumps(get_preset("tiny").to_dict()))
    before = run_key("x", a)
    (a / "preset.json").write_text(json.dumps(get_preset("tiny").with_stream(garment_attention_bias=1.0).to_dict()))
    assert run_key("x", a) != before
    # paired differences: a constant +0.1 fidelity gap has a zero-width interval; unmatched policies are skipped
    n = 20
    base = _fake_result("disentangle", [0.5] * n, [0.0] * n, [1.0] * n, [[4.0, 16.0]] * n, body=[0.4] * n)
    # continuity is a ratio: halving every swap jump is x0.50 whatever the base; a zero or NaN entry is skipped
    better = _fake_result("disentangle", [0.6] * n, [1.0] * (n // 2) + [0.0] * (n // 2), [2.0] * n,
                          [[2.0, 8.0, 0.0, float("nan")]] * n, body=[0.45] * n)
    other = _fake_result("refresh", [0.9] * n, [1.0] * n, [1.0] * n)
    md = paired_table([("base", base), ("m", better), ("m", other)], "base")
    row = [line for line in md.splitlines() if line.startswith("| m |")]
    assert len(row) == 1 and "| disentangle | 20 |" in row[0]
    assert "+0.100 [+0.100, +0.100]" in row[0] and "+1.000 [+1.000, +1.000]" in row[0]
    assert "+0.500 [" in row[0]
    assert "×0.50 [×0.50, ×0.50]" in row[0]
    assert "| +0.050 [+0.050, +0.050] |" in row[0]  # body IoU
    # a model without continuity values gets a dash in that column, not a crash
    none = _fake_result("disentangle", [0.6] * n, [1.0] * n, [1.0] * n)
    row = [line for line in paired_table([("base", base), ("n", none)], "base").splitlines()
           if line.startswith("| n |")]
    assert row and row[0].rstrip().endswith("| – | – |")  # nor body IoU (results from before it existed)
    assert paired_table([("base", base)], "base") == ""
    # --base-policy: rows of another policy are taken against the base model under that policy
    md = paired_table([("base", base), ("base", other)], "base", base_policy="disentangle")
    row = [line for line in md.splitlines() if line.startswith("| base | refresh |")]
    assert row and "+0.400 [+0.400, +0.400]" in row[0] and "(disentangle)" in md.splitlines()[0]


def test_swap_jumps_files_each_jump_under_the_frame_it_lands_on():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from swap_jumps import classify_jumps

    # first chunk 9 frames (latents 0..2), then 12-frame chunks; tf = 4; a swap lands on frame 21
    jumps = np.arange(32, dtype=float)  # jumps[i] lands on frame i + 1
    parts = classify_jumps(jumps, [21], first=9, chunk=12, after=2, latent=4)
    assert parts["swap"] == [20.0]
    assert parts["after_swap"] == [21.0, 22.0]
    assert parts["chunk_boundary"] == [8.0]  # frame 33 (the next boundary) is past the end
    lb = [f + 1 for f in map(int, parts["latent_boundary"])]
    assert lb == [1, 5, 13, 17, 25, 29]  # latent starts that are neither chunk starts nor the swap
    assert sorted(parts["latent_boundary"] + parts["within_latent"]) == parts["within_chunk"]
    assert "latent_boundary" not in classify_jumps(jumps, [], 9, 12)
    # an anchored restore at the boundary frame 33 is filed apart from the ordinary boundaries
    parts = classify_jumps(np.arange(44, dtype=float), [21], first=9, chunk=12, restores=[33])
    assert parts["restore"] == [32.0] and parts["chunk_boundary"] == [8.0]


def test_paired_segments_by_segment_and_after_swap():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from paired_segments import after_swap_paired, by_segment

    def res(after):  # 3 cases, 2-3 segments; the first segment equal, the later ones `after`
        return {"per_case": [{"case": i, "segments": [{"identity": 0.9}] + [{"identity": after}] * (1 + i % 2)}
                             for i in range(3)]}

    a, b = res(0.7), res(0.8)
    assert by_segment(a, "identity") == pytest.approx([0.9, 0.7, 0.7])
    p = after_swap_paired(a, b, "identity")
    assert p["n"] == 3 and p["mean"] == pytest.approx(0.1) and p["ci95"] == pytest.approx([0.1, 0.1])
    assert after_swap_paired(a, b, "missing_key")["n"] == 0


def test_paired_segments_by_garment_pattern():
    """--by-pattern: B - A per segment, grouped by the world's pattern of the segment's garment id."""
    import sys
    from pathlib import Path

    from fashionchameleon.data import MannequinWorld

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from paired_segments import by_group_paired, garment_pattern

    world = MannequinWorld()
    ids = list(range(5000, 5040))
    pats = {i: world.sample_upper_garment(i).pattern for i in ids}

    def res(shift):  # fidelity 0.5, plus `shift` on segments whose garment has dots
        return {"per_case": [{"case": i, "segments": [{"garment_id": f"upper-{g}",
                                                       "fidelity": 0.5 + (shift if pats[g] == "dots" else 0.0)}]}
                             for i, g in enumerate(ids)]}

    out = by_group_paired(res(0.0), res(-0.2), "fidelity", garment_pattern(world))
    assert set(out) == set(pats.values()) and "dots" in out
    assert out["dots"]["mean"] == pytest.approx(-0.2) and out["dots"]["n"] == sum(p == "dots" for p in pats.values())
    assert all(v["mean"] == pytest.approx(0.0) for g, v in out.items() if g != "dots")
