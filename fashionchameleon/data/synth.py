"""`fashionchameleon data synth`: write mannequin-world triplets in the folder format, and the demo assets.

    python -m fashionchameleon.data.synth --out DIR --clips N --seed S [--size HxW] [--frames T] [--split train]
    python -m fashionchameleon.data.synth assets --out assets
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from .folder import GT_COLUMN, META_FILE, REQUIRED_COLUMNS, SEED_STRIDE, write_video
from .world import (PATTERNS, SPLIT_SEEDS, UPPER_TYPES, MannequinWorld, WorldConfig, check_frames, check_size)


@dataclass(frozen=True)
class SynthConfig:
    fps: int = WorldConfig.fps
    crf: int = 18  # visually lossless-ish H.264
    name_digits: int = 6


FRONTAL_MOTIONS = ("pose", "walk_in_place", "wave_right", "sway", "swing_arms", "wave_left")


@dataclass(frozen=True)
class AssetsConfig:
    size: tuple[int, int] = (WorldConfig.height, WorldConfig.width)
    references: int = 6
    garments: int = 12  # 4 types x 6 patterns interleave so every type and pattern appears


def _write_png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def synth_folder(out_dir: str, clips: int, seed: int = 0, size=(160, 128), frames: int = 9, split: str = "train",
                 world: MannequinWorld | None = None, config: SynthConfig | None = None) -> str:
    """Render `clips` triplets of `split` into out_dir in the folder format; returns the csv path.
    Row i is triplet index seed * 2**32 + i, i.e. the same item as WorldDataset(split, seed=seed)[i]."""
    size, frames = check_size(size), check_frames(frames)
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"--size must be even for H.264 video, got {size[0]}x{size[1]}")
    world = world or MannequinWorld()
    cfg = config or SynthConfig()
    for sub in ("src", "cloth", "video", "gt"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    rows = []
    for i in range(clips):
        tr = world.sample_triplet(seed * SEED_STRIDE + i, split, frames, size)
        name = f"{i:0{cfg.name_digits}d}"
        rel = {"src_image": f"src/{name}.png", "cloth_image": f"cloth/{name}.png", "video": f"video/{name}.mp4",
               GT_COLUMN: f"gt/{name}.npz"}
        _write_png(os.path.join(out_dir, rel["src_image"]), tr.reference)
        _write_png(os.path.join(out_dir, rel["cloth_image"]), tr.garment)
        write_video(os.path.join(out_dir, rel["video"]), tr.video, cfg.fps, cfg.crf)
        g = tr.gt
        np.savez_compressed(
            os.path.join(out_dir, rel[GT_COLUMN]), keypoints=g["keypoints"], masks=g["masks"],
            reference_mask=g["reference_mask"], garment_id=g["garment_id"], ref_garment_id=g["ref_garment_id"],
            lower_garment_id=g["lower_garment_id"], person_id=g["person_id"], background_id=g["background_id"],
            motion=np.str_(g["motion"]), upper_type=np.str_(g["upper_type"]), pattern=np.str_(g["pattern"]),
            index=np.int64(g["index"]), split=np.str_(split))
        rows.append({**rel, "prompt": tr.prompt})
    path = os.path.join(out_dir, META_FILE)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(REQUIRED_COLUMNS) + [GT_COLUMN])
        w.writeheader()
        w.writerows(rows)
    return path


def _garment_with(world: MannequinWorld, start: int, gtype: str, pattern: str):
    """First garment of `gtype` with `pattern`, scanning seeds upward from `start`."""
    for s in range(start, SPLIT_SEEDS["test"][1]):
        g = world.sample_upper_garment(s, type=gtype)
        if g.pattern == pattern:
            return g
    raise RuntimeError(f"no {gtype}/{pattern} garment in the test seed range")


def make_assets(out_dir: str = "assets", world: MannequinWorld | None = None,
                config: AssetsConfig | None = None) -> dict:
    """Demo references and garment product images from the held-out test split, with a README table."""
    world = world or MannequinWorld()
    cfg = config or AssetsConfig()
    size = check_size(cfg.size)
    ref_dir, gar_dir = os.path.join(out_dir, "references"), os.path.join(out_dir, "garments")
    os.makedirs(ref_dir, exist_ok=True)
    os.makedirs(gar_dir, exist_ok=True)
    refs, garments = [], []
    for i in range(cfg.references):
        s = world.triplet_seeds(i, "test")
        person, lower = world.sample_person(s["person"]), world.sample_lower_garment(s["lower"])
        upper = world.sample_upper_garment(s["upper"])
        # demo references should face the camera near the centre: cycle through the frontal motions
        name = FRONTAL_MOTIONS[i % len(FRONTAL_MOTIONS)]
        bg, motion = world.sample_background(s["background"]), world.sample_motion(s["motion"], name=name)
        frame, _ = world.render_frames(person, upper, lower, bg, motion, 1, size)
        name = f"ref_{i:02d}.png"
        _write_png(os.path.join(ref_dir, name), frame[0])
        refs.append({"file": f"references/{name}", "person": person.id, "upper": upper.id, "upper_type": upper.type,
                     "pattern": upper.pattern, "lower": lower.id, "lower_type": lower.type, "background": bg.id,
                     "background_kind": bg.kind, "motion": motion.id, "prompt": motion.prompt})
    start = SPLIT_SEEDS["test"][0]
    for j in range(cfg.garments):
        gtype, pattern = UPPER_TYPES[j % len(UPPER_TYPES)], PATTERNS[j % len(PATTERNS)]
        g = _garment_with(world, start, gtype, pattern)
        start = g.id + 1
        name = f"{gtype}_{pattern}_{j:02d}.png"
        _write_png(os.path.join(gar_dir, name), world.product_image(g, size))
        garments.append({"file": f"garments/{name}", "id": g.id, "type": gtype, "pattern": pattern,
                         "color": "#%02x%02x%02x" % g.color})
    with open(os.path.join(ref_dir, "index.json"), "w") as f:
        json.dump(refs, f, indent=1)
    with open(os.path.join(gar_dir, "index.json"), "w") as f:
        json.dump(garments, f, indent=1)
    _write_assets_readme(out_dir, refs, garments, size)
    return {"references": refs, "garments": garments}


def _write_assets_readme(out_dir, refs, garments, size):
    lo, hi = SPLIT_SEEDS["test"]
    lines = [
        "# Demo assets",
        "",
        f"Rendered by `python -m fashionchameleon.data.synth assets --out assets` at {size[0]}x{size[1]} (HxW) from the",
        f"mannequin world's **test** split (entity seeds in [{lo}, {hi})), so no model trained on the train split has",
        "seen these people or garments. Ids are entity seeds (see `fashionchameleon/data/world.py`, docs/DATA.md).",
        "`references/index.json` and `garments/index.json` hold the same tables as JSON.",
        "",
        "## References (frame 0 of a test clip)",
        "",
        "| file | person | worn garment (id, type, pattern) | lower (id, type) | background (id, kind) | motion seed, prompt |",
        "|---|---|---|---|---|---|",
    ]
    for r in refs:
        lines.append(f"| `{r['file']}` | {r['person']} | {r['upper']}, {r['upper_type']}, {r['pattern']} | "
                     f"{r['lower']}, {r['lower_type']} | {r['background']}, {r['background_kind']} | "
                     f"{r['motion']}, \"{r['prompt']}\" |")
    lines += ["", "## Garments (flat-lay product images on white)", "", "| file | garment id | type | pattern | colour |",
              "|---|---|---|---|---|"]
    for g in garments:
        lines.append(f"| `{g['file']}` | {g['id']} | {g['type']} | {g['pattern']} | `{g['color']}` |")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return check_size((int(h), int(w)))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 160x128): {text!r}") from e


def _parse_frames(text: str) -> int:
    try:
        return check_frames(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv=None) -> int:
    """Entry point for `fashionchameleon data synth ...` and `python -m fashionchameleon.data.synth`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "synth"
    if argv and argv[0] in ("synth", "assets"):
        command, argv = argv[0], argv[1:]
    cfg = WorldConfig()
    if command == "assets":
        ap = argparse.ArgumentParser(prog="fashionchameleon data assets",
                                     description="Render the bundled demo references and garments (test split).")
        ap.add_argument("--out", default="assets")
        ap.add_argument("--size", type=_parse_size, default=AssetsConfig.size, help="HxW")
        args = ap.parse_args(argv)
        info = make_assets(args.out, config=AssetsConfig(size=args.size))
        print(f"wrote {len(info['references'])} references and {len(info['garments'])} garments to {args.out}")
        return 0
    ap = argparse.ArgumentParser(prog="fashionchameleon data synth",
                                 description="Write mannequin-world triplets in the dataset folder format.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=_parse_size, default=(cfg.height, cfg.width), help="HxW, even")
    ap.add_argument("--frames", type=_parse_frames, default=cfg.frames, help="1 + 4k")
    ap.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="train")
    args = ap.parse_args(argv)
    path = synth_folder(args.out, args.clips, args.seed, args.size, args.frames, args.split)
    print(f"wrote {args.clips} clips ({args.split}, seed {args.seed}, {args.size[0]}x{args.size[1]}, "
          f"{args.frames} frames) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
