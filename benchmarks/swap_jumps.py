"""Where the landmark jumps of a stream happen: at the swap frame, just after it, at ordinary chunk boundaries, or
inside chunks (docs/TRAINING.md, run 9). The evaluation's landmark continuity is the swap jump divided by the
median of all other jumps; this splits the denominator so a swap jump can be read in pixels.

    python benchmarks/swap_jumps.py --checkpoint assets/checkpoints/fashionchameleon-tiny --cases 10 \
        [--strip out.png --strip-cases 3,4,7] [--json out.json]

The strip shows, per listed case, the frames from 3 before to 4 after its first swap.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from fashionchameleon import metrics as M
from fashionchameleon.evaluate import Evaluator, build_cases, load_engine, run_case, settle_frames


def classify_jumps(jumps: np.ndarray, swaps: list[int], first: int, chunk: int, after: int = 2,
                   latent: int = 0, restores: list[int] = ()) -> dict[str, list[float]]:
    """`jumps[i]` is the move from frame i to i + 1; it is filed under the frame it lands on. Chunks start at frame
    0, `first` (the first chunk is shorter: the causal VAE's first latent is one frame), `first + chunk`, ...
    With `latent` (the VAE's temporal factor), jumps inside a chunk are split into those onto the first frame of a
    latent frame ("latent_boundary": one latent to the next, inside one denoised chunk) and the rest ("within_latent":
    frames the decoder draws from one latent). `restores` (the `anchored` policy's reference steps, at chunk
    boundaries) are filed under "restore" instead of "chunk_boundary"."""
    out: dict[str, list[float]] = {"swap": [], "after_swap": [], "chunk_boundary": [], "within_chunk": []}
    if latent:
        out.update(latent_boundary=[], within_latent=[])
    if restores:
        out["restore"] = []
    swap_set, restore_set = set(swaps), set(restores)
    for i, j in enumerate(jumps):
        if np.isnan(j):
            continue
        f = i + 1
        if f in swap_set:
            key = "swap"
        elif any(0 < f - s <= after for s in swaps):
            key = "after_swap"
        elif f in restore_set:
            key = "restore"
        elif f >= first and (f - first) % chunk == 0:
            key = "chunk_boundary"
        else:
            key = "within_chunk"
        out[key].append(float(j))
        if key == "within_chunk" and latent:
            out["latent_boundary" if (f - 1) % latent == 0 else "within_latent"].append(float(j))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="stage folder (default: the shipped model)")
    ap.add_argument("--policy", default="disentangle")
    ap.add_argument("--cases", type=int, default=10, help="short cases of the evaluation's case set (seed 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strip", help="PNG of the frames around the first swap of --strip-cases")
    ap.add_argument("--strip-cases", default="3,4,7")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    engine = load_engine(args.checkpoint, False)
    ev = Evaluator()
    chunk = settle_frames(engine)
    first = engine.preset.pixel_frames(engine.preset.stream.chunk_frames)
    strip_ids = {int(s) for s in args.strip_cases.split(",") if s} if args.strip else set()
    pooled: dict[str, list[float]] = {}
    rows, per_case = [], []
    for case in build_cases(args.cases, seed=args.seed):
        if case.long:
            continue
        r = run_case(engine, case, args.policy, ev, keep_frames=True)
        video = r["video"]
        jumps = M.motion_jumps(M.mask_landmarks(ev.masks(video), ev.cfg))
        parts = classify_jumps(jumps, r["actual_swaps"], first, chunk, latent=engine.preset.temporal_factor,
                               restores=r["restore_frames"])
        for k, v in parts.items():
            pooled.setdefault(k, []).extend(v)
        per_case.append({"case": case.index, "swaps": r["actual_swaps"], "continuity_kp": r["continuity_kp"],
                         "swap_jump_px": parts["swap"], "restores": r["restore_frames"],
                         "restore_jump_px": parts.get("restore", [])})
        print(per_case[-1], flush=True)
        if case.index in strip_ids and r["actual_swaps"]:
            s = r["actual_swaps"][0]
            rows.append(np.concatenate([video[t] for t in range(s - 3, s + 5)], axis=1))
    summary = {k: {"n": len(v), "median_px": float(np.median(v)) if v else None,
                   "mean_px": float(np.mean(v)) if v else None} for k, v in pooled.items()}
    res = {"checkpoint": args.checkpoint, "policy": args.policy, "first_chunk_frames": first, "chunk_frames": chunk,
           "summary": summary,
           "cases": per_case}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.strip and rows:
        import cv2

        img = cv2.resize(np.concatenate(rows, axis=0), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(args.strip, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return res


if __name__ == "__main__":
    main()
