"""Ten swaps in a 1,008-frame stream, per policy: the protocol of `tests/test_long_stream.py::test_ten_swaps_keep_the_person`
(bundled references 0 and 3, five garments cycled so the last window wears the first garment again), printed as
early -> late window for each policy (docs/RESCHEDULING.md, session 13).

    python benchmarks/long_swaps.py --policies disentangle,anchored [--checkpoint DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fashionchameleon.data.folder import read_image  # noqa: E402
from fashionchameleon.evaluate import Evaluator, stream_health  # noqa: E402
from fashionchameleon.stream import ASSETS_DIR as ASSETS  # noqa: E402
from fashionchameleon.stream import DEFAULT_CHECKPOINT, StreamingEngine  # noqa: E402

FRAMES = 1008
SWAP_EVERY = 96  # 10 swaps in FRAMES
# reference index -> garments cycled; five, so that after ten swaps the last window wears the first one again
CASES = {0: ["longsleeve_hstripes_01.png", "tshirt_dots_04.png", "jacket_logo_11.png", "tank_vstripes_02.png",
             "longsleeve_checks_09.png"],
         3: ["tank_solid_06.png", "longsleeve_hstripes_01.png", "tshirt_dots_04.png", "jacket_logo_11.png",
             "tank_vstripes_02.png"]}
KEYS = ("person_area", "contrast", "sharpness", "fidelity", "identity")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", default="disentangle,anchored")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    engine, ev = StreamingEngine.from_checkpoint(a.checkpoint), Evaluator()
    refs = json.loads((ASSETS / "references/index.json").read_text())
    out = []
    for ref_i, garments in CASES.items():
        imgs = [read_image(str(ASSETS / "garments" / g)) for g in garments]
        for policy in [p for p in a.policies.split(",") if p]:
            t0 = time.perf_counter()
            h = stream_health(engine, read_image(str(ASSETS / refs[ref_i]["file"])), imgs[0], refs[ref_i]["prompt"],
                              FRAMES, ev, policy=policy, swap_garments=imgs[1:], swap_every=SWAP_EVERY)
            h.update(reference=refs[ref_i]["file"], garments=garments, seconds=time.perf_counter() - t0)
            out.append(h)
            print(f"ref {ref_i} {policy:12s} swaps {len(h['swaps'])} " + "  ".join(
                f"{k} {h['early'][k]:.3f}->{h['late'][k]:.3f}" for k in KEYS), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
