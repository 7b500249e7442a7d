"""How a VAE moves the figure between frames: landmark jumps of ground-truth clips and of their reconstructions,
split as in `swap_jumps.py` (onto a latent's first frame vs between frames decoded from one latent; docs/TRAINING.md,
run 10). Ground-truth motion is ~uniform; a decoder that holds each latent still and jumps at the next shows small
`within_latent` and large `latent_boundary` moves.

    python benchmarks/vae_motion.py --vae shipped=assets/checkpoints/fashionchameleon-tiny/vae \
        --vae motion=runs/vae_dec_motion3/final --cases 6 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # teacher/ (the VAE trainer's PSNR)

from fashionchameleon import metrics as M  # noqa: E402
from fashionchameleon.data.world import MannequinWorld  # noqa: E402
from fashionchameleon.evaluate import CaseAssets, Evaluator, build_cases  # noqa: E402
from fashionchameleon.imageops import to_uint8_frames  # noqa: E402
from fashionchameleon.vae import load_vae, pixel_frames  # noqa: E402
from swap_jumps import classify_jumps  # noqa: E402
from teacher.train_vae import clip_psnr, reconstruct  # noqa: E402

KEYS = ("latent_boundary", "within_latent", "chunk_boundary")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--cases", type=int, default=6, help="short cases of the evaluation's case set (seed 0)")
    ap.add_argument("--size", default="160x128", help="HxW")
    ap.add_argument("--chunk-latents", type=int, default=3, help="latent frames per streamed chunk")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    vaes = {}
    for spec in args.vae:
        name, _, path = spec.partition("=")
        vaes[name] = load_vae(path)
    tf = {v.temporal_factor for v in vaes.values()}
    if len(tf) != 1:
        raise SystemExit(f"all VAEs must share one temporal factor, got {sorted(tf)}")
    tf = tf.pop()
    h, w = (int(s) for s in args.size.lower().split("x"))
    first, chunk = pixel_frames(args.chunk_latents, tf), tf * args.chunk_latents
    ev, world = Evaluator(), MannequinWorld()
    pooled: dict[str, dict[str, list[float]]] = {n: {} for n in ("ground truth", *vaes)}
    psnrs: dict[str, list[float]] = {n: [] for n in vaes}
    for case in build_cases(args.cases, seed=0):
        if case.long:
            continue
        frames, _ = CaseAssets(case, world, (h, w)).ground_truth()
        frames = frames[: pixel_frames((len(frames) - 1) // tf + 1, tf)]
        x = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)  # one clip [C, T, H, W]
        videos = {"ground truth": frames}
        for name, vae in vaes.items():
            rec = reconstruct(vae, [x], batch_size=1)
            videos[name] = to_uint8_frames(rec)
            psnrs[name].append(clip_psnr(rec, [x]))
        for name, v in videos.items():
            jumps = M.motion_jumps(M.mask_landmarks(ev.masks(v), ev.cfg))
            for k, vals in classify_jumps(jumps, [], first, chunk, latent=tf).items():
                pooled[name].setdefault(k, []).extend(vals)
    res = {name: {**{f"{k}_median_px": float(np.median(p[k])) for k in KEYS if p.get(k)},
                  **({"psnr_db": float(np.mean(psnrs[name]))} if name in psnrs else {})}
           for name, p in pooled.items()}
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": args.cases, "size": [h, w], "vaes": dict(a.partition("=")[::2] for a in args.vae),
                       "results": res}, f, indent=1)
    return res


if __name__ == "__main__":
    main()
