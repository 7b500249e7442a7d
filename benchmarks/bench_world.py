"""Mannequin-world render speed (single process): frames/s for clips of the training triplet kind.

    python benchmarks/bench_world.py [--size 128x128] [--frames 33] [--clips 40] [--threads 0]
"""

from __future__ import annotations

import argparse
import time

import cv2

from fashionchameleon.data.world import MannequinWorld, check_frames


def bench(size, frames: int, clips: int, split: str = "train") -> dict:
    world = MannequinWorld()
    warm = world.sample_triplet(0, split, check_frames(frames), size)  # imports, caches
    del warm
    rendered, start = 0, time.perf_counter()
    for i in range(clips):
        s = world.triplet_seeds(i, split)
        video, _ = world.render_frames(world.sample_person(s["person"]), world.sample_upper_garment(s["upper"]),
                                       world.sample_lower_garment(s["lower"]), world.sample_background(s["background"]),
                                       world.sample_motion(s["motion"]), frames, size)
        rendered += len(video)
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(clips):
        world.sample_triplet(i, split, frames, size)
    triplet_s = time.perf_counter() - start
    return {"frames_per_s": rendered / render_s, "triplets_per_s": clips / triplet_s,
            "triplet_frames_per_s": clips * frames / triplet_s}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="128x128", help="HxW")
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--threads", type=int, default=-1, help="cv2.setNumThreads (-1 = leave OpenCV's default)")
    args = ap.parse_args(argv)
    if args.threads >= 0:
        cv2.setNumThreads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    r = bench((h, w), args.frames, args.clips)
    print(f"world render {h}x{w}, {args.frames}-frame clips, {args.clips} clips: "
          f"{r['frames_per_s']:.0f} frames/s (render_frames); "
          f"{r['triplets_per_s']:.1f} triplets/s = {r['triplet_frames_per_s']:.0f} video frames/s "
          f"(sample_triplet incl. reference + product image)")


if __name__ == "__main__":
    main()
