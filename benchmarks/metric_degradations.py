"""Does garment fidelity prefer block artefacts to blur? Score real (ground-truth) held-out clips after each
degradation, with the same evaluation models as `docs/EVAL.md`.

    python benchmarks/metric_degradations.py --clips 24 --json docs/results/metric_degradations.json

Degradations of every frame: `blocks` (area-average to 1/8 size, nearest-neighbour back: the 8-pixel blocks of the
24.7 dB VAE the shipped model lives in), `blur` (Gaussian, sigma 3 px), `blocks+blur`. The product image is the
clip's own garment, so `clean` is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashionchameleon import metrics as M  # noqa: E402
from fashionchameleon.data.world import MannequinWorld  # noqa: E402
from fashionchameleon.evaluate import Evaluator  # noqa: E402


def blocks(f: np.ndarray, k: int) -> np.ndarray:
    h, w = f.shape[:2]
    small = cv2.resize(f, (w // k, h // k), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def blur(f: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(f, (0, 0), sigma)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=3.0)
    ap.add_argument("--size", default="160x128")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    size = tuple(int(v) for v in a.size.split("x"))
    world, ev = MannequinWorld(), Evaluator()
    ops = {"clean": lambda f: f, "blocks": lambda f: blocks(f, a.block), "blur": lambda f: blur(f, a.sigma),
           "blocks+blur": lambda f: blur(blocks(f, a.block), a.sigma)}
    scores: dict[str, list[float]] = {k: [] for k in ops}
    for i in range(a.clips):
        tr = world.sample_triplet(i, "test", a.frames, size)
        g = M.GarmentReference(tr.garment, ev.cfg)
        for name, op in ops.items():
            frames = np.stack([op(f) for f in tr.video])
            masks = ev.masks(frames)
            vals = [M.garment_fidelity(f, m, g, ev.cfg) for f, m in zip(frames, masks)]
            scores[name].append(float(np.nanmean(vals)))
    res = {k: {"mean": round(float(np.nanmean(v)), 3), "std": round(float(np.nanstd(v)), 3)} for k, v in scores.items()}
    res["config"] = vars(a)
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
