"""One long no-swap stream of a checkpoint as a strip of frames (how the run-4 long-stream figures were made).

    python benchmarks/stream_strip.py --ckpt DIR --out strip.png [--frames 600] [--at 0,12,24,...]
    python benchmarks/stream_strip.py --ckpt A --ckpt B --out cmp.png      # one row per checkpoint

Default input: the first bundled reference with the striped long-sleeve (the case of tests/test_long_stream.py that
fails first). `--health` also prints the late/early ratios that the long-stream test bounds (1,008 frames).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fashionchameleon.data.folder import read_image  # noqa: E402
from fashionchameleon.evaluate import Evaluator, stream_health  # noqa: E402
from fashionchameleon.stream import StreamingEngine  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", required=True, help="checkpoint / stage folder (repeatable)")
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--reference", type=int, default=0, help="index into assets/references/index.json")
    ap.add_argument("--garment", default="longsleeve_hstripes_01.png")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--at", default="0,12,24,48,96,150,200,300,400,500,599", help="frame indices to show")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--health", action="store_true", help="also run the 1,008-frame health ratios")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    refs = json.loads((REPO / "assets/references/index.json").read_text())
    if not 0 <= a.reference < len(refs):
        ap.error(f"--reference must be in [0, {len(refs)})")
    at = [int(x) for x in a.at.split(",")]
    if any(not 0 <= i < a.frames for i in at):
        ap.error(f"--at indices must be in [0, {a.frames})")
    ref = read_image(str(REPO / "assets" / refs[a.reference]["file"]))
    gar = read_image(str(REPO / "assets/garments" / a.garment))
    prompt = refs[a.reference]["prompt"]
    rows = []
    for ck in a.ckpt:
        eng = StreamingEngine.from_checkpoint(ck)
        frames = [f.image for f in eng.new_session().start(ref, gar, prompt, seed=a.seed, max_frames=a.frames)]
        rows.append(np.concatenate([frames[i] for i in at], axis=1))
        if a.health:
            h = stream_health(eng, ref, gar, prompt, 1008, Evaluator())
            ratios = {k: round(h["late"][k] / h["early"][k], 3) for k in ("person_area", "contrast", "sharpness")}
            print(json.dumps({"ckpt": ck, "late_over_early": ratios,
                              "fidelity_change": round(h["late"]["fidelity"] - h["early"]["fidelity"], 3)}))
    img = np.concatenate(rows, axis=0)
    img = cv2.resize(img, None, fx=a.scale, fy=a.scale, interpolation=cv2.INTER_NEAREST)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(a.out, img[:, :, ::-1])
    print(f"wrote {a.out}: rows {a.ckpt}, frames {at}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
