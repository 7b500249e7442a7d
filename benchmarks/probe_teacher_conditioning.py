"""What does the teacher's garment texture follow? Three inputs per held-out triplet, same noise, one still motion.

    OMP_NUM_THREADS=2 python benchmarks/probe_teacher_conditioning.py --ckpt assets/checkpoints/teacher_tiny \
        --num 4 --out docs/figures/run8/teacher_conditioning.jpg

Columns, per row: the reference and the first generated frame; the same reference with its own garment made solid
(same colour), and its frame; the product image shrunk and moved off-centre, and its frame; the real frame. If the
texture came from the reference's own pattern, the solid reference would clean it; if the model pasted the product
image where it lies on the canvas, the moved product would move it.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from fashionchameleon.data.world import DEFAULT_WORLD, MOTION_PROMPTS
from fashionchameleon.imageops import to_tensor
from teacher.common import load_stage
from teacher.sample import teacher_generate, to_uint8


def moved(img: np.ndarray, scale: float, dx: int) -> np.ndarray:
    """The image shrunk by `scale` and placed `dx` px right of centre on white (clipped at the border)."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    out = np.full_like(img, 255)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2 + dx
    x0, x1 = max(x, 0), min(x + small.shape[1], w)
    out[y:y + small.shape[0], x0:x1] = small[:, x0 - x:x1 - x]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="assets/checkpoints/teacher_tiny")
    ap.add_argument("--num", type=int, default=4)
    ap.add_argument("--motion", default="pose", choices=sorted(MOTION_PROMPTS))
    ap.add_argument("--scale", type=float, default=0.6, help="product image shrink factor")
    ap.add_argument("--shift", type=float, default=0.28, help="product image offset, a fraction of the width")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--eta", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    comp = load_stage(a.ckpt)
    p, world = comp.preset, DEFAULT_WORLD
    size = (p.height, p.width)
    frames = p.pixel_frames(p.stream.chunk_frames)
    rows, i = [], 0
    while len(rows) < a.num:
        s = world.triplet_seeds(i, "test")
        i += 1
        person, upper = world.sample_person(s["person"]), world.sample_upper_garment(s["upper"])
        ref_upper = world.sample_upper_garment(s["ref_upper"], type=upper.type)
        if ref_upper.pattern == "solid":  # the solid-reference column would repeat the first
            continue
        lower, bg = world.sample_lower_garment(s["lower"]), world.sample_background(s["background"])
        motion = world.sample_motion(s["motion"], name=a.motion)

        def frame0(garment):
            return world.render_frames(person, garment, lower, bg, motion, 1, size)[0][0]

        product = world.product_image(upper, size)
        inputs = [(frame0(ref_upper), product),
                  (frame0(dataclasses.replace(ref_upper, pattern="solid")), product),
                  (frame0(ref_upper), moved(product, a.scale, int(a.shift * size[1])))]
        row = []
        for ref, garment in inputs:
            clip = teacher_generate(comp, to_tensor(ref), to_tensor(garment), [motion.prompt], frames, a.steps,
                                    a.guidance, "renoise", seed=i, eta=a.eta)
            row += [ref if garment is product else garment, to_uint8(clip[0])[0]]
        rows.append(np.concatenate(row + [frame0(upper), product], axis=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(a.out, cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
