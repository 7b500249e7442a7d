"""Per-segment view of two cached evaluation runs (JSONs written by eval_table.py / `fashionchameleon eval --json`)
on the same cases: the mean of each segment metric by segment index (first garment, after the first swap, after
the second), and the paired difference B - A over the after-swap segments with a 95 % bootstrap interval.
`--by-pattern` adds the paired difference over all segments grouped by the streamed garment's pattern (solid,
stripes, checks, dots, logo; read from the mannequin world by garment id).

    python benchmarks/paired_segments.py A.json B.json [--by-pattern] [--json out.json]

It is what shows a policy's effect that compounds over swaps (docs/EVAL.md, session 13), and that the session-21/22
students' garment cost is on patterned garments, not on swaps (session 22).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashionchameleon.evaluate import _nanmean as _mean  # noqa: E402

METRICS = ("fidelity", "success", "identity", "non_target", "body_iou", "flicker")


def by_segment(res: dict, key: str) -> list[float]:
    cases = res["per_case"]
    n = max(len(c["segments"]) for c in cases)
    return [_mean([c["segments"][j].get(key) for c in cases if len(c["segments"]) > j]) for j in range(n)]


def _boot(d: np.ndarray, samples: int, seed: int) -> dict:
    d = d[~np.isnan(d)]
    if not len(d):
        return {"n": 0, "mean": None, "ci95": None}
    boot = d[np.random.default_rng(seed).integers(0, len(d), (samples, len(d)))].mean(axis=1)
    return {"n": int(len(d)), "mean": float(d.mean()), "ci95": [float(x) for x in np.percentile(boot, [2.5, 97.5])]}


def after_swap_paired(a: dict, b: dict, key: str, samples: int = 2000, seed: int = 0) -> dict:
    """Per case, the mean of `key` over its segments after the first; then B - A over the shared cases."""
    def per_case(res):
        return {c["case"]: _mean([s.get(key) for s in c["segments"][1:]]) for c in res["per_case"]
                if len(c["segments"]) > 1}

    va, vb = per_case(a), per_case(b)
    return _boot(np.array([vb[i] - va[i] for i in sorted(set(va) & set(vb))], dtype=float), samples, seed)


def by_group_paired(a: dict, b: dict, key: str, group, samples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """B - A per segment (matched by case and segment index), grouped by `group(segment) -> str`."""
    sa = {(c["case"], j): s for c in a["per_case"] for j, s in enumerate(c["segments"])}
    sb = {(c["case"], j): s for c in b["per_case"] for j, s in enumerate(c["segments"])}
    groups: dict[str, list[float]] = {}
    for k in sorted(set(sa) & set(sb)):
        va, vb = sa[k].get(key), sb[k].get(key)
        if va is not None and vb is not None:
            groups.setdefault(group(sa[k]), []).append(vb - va)
    return {g: _boot(np.array(v, dtype=float), samples, seed) for g, v in sorted(groups.items())}


def garment_pattern(world=None):
    """segment -> the pattern of its upper garment (`garment_id` "upper-<id>" of the mannequin world)."""
    from fashionchameleon.data import MannequinWorld

    world = world or MannequinWorld()
    return lambda seg: world.sample_upper_garment(int(str(seg["garment_id"]).rsplit("-", 1)[1])).pattern


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--json")
    ap.add_argument("--by-pattern", action="store_true", help="B - A grouped by the garment's pattern")
    args = ap.parse_args(argv)
    a, b = (json.load(open(p)) for p in (args.a, args.b))
    out = {"a": {"file": args.a, "policy": a.get("policy"), "checkpoint": a.get("checkpoint")},
           "b": {"file": args.b, "policy": b.get("policy"), "checkpoint": b.get("checkpoint")},
           "by_segment": {k: {"a": by_segment(a, k), "b": by_segment(b, k)} for k in METRICS},
           "after_swap_b_minus_a": {k: after_swap_paired(a, b, k) for k in METRICS}}
    for k in METRICS:
        seg = out["by_segment"][k]
        p = out["after_swap_b_minus_a"][k]
        ci = "" if p["ci95"] is None else f" [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
        print(f"{k:11s} A by segment {' '.join(f'{x:.3f}' for x in seg['a'])} | B {' '.join(f'{x:.3f}' for x in seg['b'])}"
              f" | after-swap B-A {p['mean'] if p['mean'] is None else format(p['mean'], '+.3f')}{ci} (n={p['n']})")
    if args.by_pattern:
        pat = garment_pattern()
        out["by_pattern_b_minus_a"] = {k: by_group_paired(a, b, k, pat) for k in ("fidelity", "pattern", "success",
                                                                                  "body_iou")}
        for k, groups in out["by_pattern_b_minus_a"].items():
            print(f"{k:9s} B-A by pattern: " + ", ".join(
                f"{g} {p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] (n={p['n']})"
                for g, p in groups.items() if p["n"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
