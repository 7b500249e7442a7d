"""Does the stream still move in steps? Landmark jumps per frame class with and without the display-side
in-betweens (`StreamConfig.frame_interpolation`, docs/DESIGN.md), against the ground-truth render of each case.

Each case is streamed once without in-betweens; the in-betweens are then applied to the same frames (the session
does exactly this, `tests/test_interpolate.py`), so both rows share every latent.

    python benchmarks/inbetween_motion.py --cases 24 [--checkpoint DIR] [--json out.json] [--plot out.png]

The plot shows one case's body-centroid track: the decoded stream's staircase, the in-betweens and the ground truth.
It also reports how soon the new garment shows after each swap: per frame of the first swapped chunk, garment
fidelity to the new garment minus fidelity to the old one, and the first frame where it is positive.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fashionchameleon import metrics as M
from fashionchameleon.data import MannequinWorld
from fashionchameleon.evaluate import CaseAssets, Evaluator, build_cases, run_case, settle_frames
from fashionchameleon.interpolate import FlowInterpolator
from fashionchameleon.stream import StreamingEngine

from swap_jumps import classify_jumps

BODY = M.MOTION_LANDMARKS.index("body_centroid")


def interpolate_video(video: np.ndarray, temporal_factor: int) -> tuple[np.ndarray, float]:
    """In-betweens of a whole decoded stream (frame 0, then whole latent groups; a cut-off tail passes through).
    Returns the frames and the in-betweening time per frame (s)."""
    n = 1 + temporal_factor * ((len(video) - 1) // temporal_factor)
    t0 = time.perf_counter()
    out = FlowInterpolator(temporal_factor)(list(video[:n]))
    per_frame = (time.perf_counter() - t0) / n
    return np.stack(out + list(video[n:])), per_frame


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="stage folder (default: the shipped model)")
    ap.add_argument("--policy", default="anchored")
    ap.add_argument("--cases", type=int, default=24, help="evaluation cases (seed 0; long ones skipped)")
    ap.add_argument("--plot-case", type=int, default=None, help="case of the plot (default: the first one)")
    ap.add_argument("--plot")
    ap.add_argument("--json")
    a = ap.parse_args(argv)

    engine = StreamingEngine.from_checkpoint(a.checkpoint, stream={"frame_interpolation": "none"})
    ev, world = Evaluator(), MannequinWorld()
    tf = engine.preset.temporal_factor
    chunk = settle_frames(engine)
    first = engine.preset.pixel_frames(engine.preset.stream.chunk_frames)
    pooled: dict[str, dict[str, list[float]]] = {"decoded": {}, "inbetweens": {}, "ground_truth": {}}
    tracks, cost = None, []
    swap_gain: dict[str, list[list[float]]] = {"decoded": [], "inbetweens": []}
    for case in build_cases(a.cases):
        if case.long:
            continue
        r = run_case(engine, case, a.policy, ev, keep_frames=True)
        video = r["video"]
        inb, per_frame = interpolate_video(video, tf)
        cost.append(per_frame)
        assets = CaseAssets(case, world, (engine.height, engine.width))
        _, gt = assets.ground_truth(r["actual_swaps"])
        masks = {"decoded": ev.masks(video), "inbetweens": ev.masks(inb), "ground_truth": gt["masks"][:len(video)]}
        refs = [M.GarmentReference(p, ev.cfg) for p in assets.products]
        for j, s0 in enumerate(r["actual_swaps"]):
            for k, vid in (("decoded", video), ("inbetweens", inb)):
                swap_gain[k].append([M.garment_fidelity(vid[t], masks[k][t], refs[j + 1], ev.cfg)
                                     - M.garment_fidelity(vid[t], masks[k][t], refs[j], ev.cfg)
                                     for t in range(s0, min(s0 + chunk, len(vid)))])
        lms = {k: M.mask_landmarks(m, ev.cfg) for k, m in masks.items()}
        for k, lm in lms.items():
            parts = classify_jumps(M.motion_jumps(lm), r["actual_swaps"], first, chunk, latent=tf,
                                   restores=r["restore_frames"])
            for cls, v in parts.items():
                pooled[k].setdefault(cls, []).extend(v)
        if tracks is None and (a.plot_case is None or a.plot_case == case.index):
            tracks = {"case": case.index, "prompt": case.prompt, "swaps": r["actual_swaps"],
                      **{k: lm[:, BODY, 0].tolist() for k, lm in lms.items()}}
        print(case.index, case.prompt, flush=True)
    summary = {k: {cls: {"n": len(v), "median_px": float(np.median(v)), "mean_px": float(np.mean(v))}
                   for cls, v in d.items() if v} for k, d in pooled.items()}
    swap_show = {}
    for k, rows in swap_gain.items():
        firsts = [next((i for i, x in enumerate(d) if x > 0), None) for d in rows]
        shown = [f for f in firsts if f is not None]
        swap_show[k] = {"swaps": len(rows), "new_minus_old_per_frame": np.nanmean(np.array(rows), 0).tolist(),
                        "first_frame_new_ahead_median": float(np.median(shown)) if shown else None,
                        "never_ahead": len(firsts) - len(shown)}
    res = {"checkpoint": a.checkpoint, "policy": a.policy, "inbetween_ms_per_frame": 1e3 * float(np.mean(cost)),
           "summary": summary, "swap_show": swap_show, "track": tracks}
    print(json.dumps({k: {c: round(v["median_px"], 2) for c, v in d.items()} for k, d in summary.items()}, indent=1))
    print(f"in-betweens: {res['inbetween_ms_per_frame']:.2f} ms per frame (one thread, offline)")
    for k, d in swap_show.items():
        print(f"{k}: new garment ahead from frame {d['first_frame_new_ahead_median']} of the swapped chunk (median of "
              f"{d['swaps'] - d['never_ahead']}; never in {d['never_ahead']}); per frame "
              f"{np.round(d['new_minus_old_per_frame'], 3).tolist()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.plot and tracks:
        plot_track(tracks, a.plot, tf)
    return res


def plot_track(tracks: dict, path: str, tf: int, span: int = 64, scale: int = 10, height: int = 260) -> None:
    """Line chart of the first `span` frames of each track (OpenCV, no plotting dependency)."""
    import cv2

    series = {k: np.asarray(tracks[k][:span], np.float64) for k in ("ground_truth", "decoded", "inbetweens")}
    vals = np.concatenate([v[np.isfinite(v)] for v in series.values()])
    lo, hi = vals.min() - 1.0, vals.max() + 1.0
    pad_l, pad_b, pad_t = 48, 28, 24
    w = pad_l + scale * (span - 1) + 12
    img = np.full((height + pad_b + pad_t, w, 3), 255, np.uint8)
    y_of = lambda v: int(round(pad_t + (hi - v) / (hi - lo) * height))  # noqa: E731
    for b in range(1, span, tf):  # first frame of each latent
        cv2.line(img, (pad_l + scale * b, pad_t), (pad_l + scale * b, pad_t + height), (225, 225, 225), 1)
    colours = {"ground_truth": (0, 0, 0), "decoded": (40, 40, 210), "inbetweens": (200, 110, 20)}  # BGR
    for k, v in series.items():
        pts = [(pad_l + scale * i, y_of(x)) for i, x in enumerate(v) if np.isfinite(x)]
        cv2.polylines(img, [np.array(pts, np.int32)], False, colours[k], 2 if k != "ground_truth" else 1,
                      cv2.LINE_AA)
    for j, k in enumerate(series):
        cv2.putText(img, k.replace("_", " "), (pad_l + 8 + 150 * j, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colours[k], 1,
                    cv2.LINE_AA)
    cv2.putText(img, f"{hi:.0f}px", (2, pad_t + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.putText(img, f"{lo:.0f}px", (2, pad_t + height), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.putText(img, f"body centroid x over frames 0-{span - 1} (case {tracks['case']}, {tracks['prompt']}); "
                f"grey: first frame of each latent", (pad_l, height + pad_t + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (60, 60, 60), 1, cv2.LINE_AA)
    cv2.imwrite(path, img)


if __name__ == "__main__":
    main()
