"""The shipped 4-step student streams 1,000+ frames without collapsing (issue: streaming distillation), with no
swap and with ten.

Bundled held-out assets, no swap; the evaluator describes the first window after the first chunk and the last
window: the person must still be there (area), with its contrast, sharpness and garment, not faded or blown up.
Thresholds are relative to the same stream's early window, so they hold for any model that does not collapse.
(The previous shipped student, with the paper's M = 23 cache, failed the first case: contrast x1.52 and sharpness
x1.77 by frame 1,000, block noise growing as the cache outgrew its training clips.)
"""

import json
import os
import sys
from pathlib import Path

import pytest

from fashionchameleon.data.folder import read_image
from fashionchameleon.evaluate import Evaluator, stream_health
from fashionchameleon.stream import DEFAULT_CHECKPOINT, StreamingEngine

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FRAMES = 1008
KEEP = 0.7  # late / early ratio that still counts as "the same stream"
FIDELITY_DROP = 0.1


@pytest.mark.parametrize("ref_i,garment", [(0, "longsleeve_hstripes_01.png"), (3, "tank_solid_06.png")])
def test_shipped_student_streams_1000_frames_without_collapse(ref_i, garment):
    refs = json.loads((ASSETS / "references/index.json").read_text())
    # FASHIONCHAMELEON_CHECKPOINT=DIR runs the same protocol on another model (how the DMD numbers were taken)
    engine = StreamingEngine.from_checkpoint(os.environ.get("FASHIONCHAMELEON_CHECKPOINT", DEFAULT_CHECKPOINT))
    h = stream_health(engine, read_image(str(ASSETS / refs[ref_i]["file"])),
                      read_image(str(ASSETS / "garments" / garment)), refs[ref_i]["prompt"], FRAMES, Evaluator())
    early, late = h["early"], h["late"]
    print(json.dumps(h))
    assert h["frames"] == FRAMES and h["finite"]
    for k in ("person_area", "contrast", "sharpness"):  # neither faded nor blown up into noise
        assert KEEP * early[k] <= late[k] <= early[k] / KEEP, (k, early[k], late[k])
    assert early["person_area"] > 0
    assert late["fidelity"] >= early["fidelity"] - FIDELITY_DROP


IDENTITY_DROP = 0.1
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from long_swaps import CASES, SWAP_EVERY  # noqa: E402  (the protocol lives with its benchmark)


@pytest.mark.parametrize("ref_i", sorted(CASES))
def test_ten_swaps_keep_the_person(ref_i):
    """Ten swaps over 1,008 frames with the default policy, cycling through five garments so that the last window
    wears the first garment again: the late window must still match the early one, the person's identity included.
    (The paper's `disentangle` fails this: each swap re-encodes a generated frame as the reference, and after ten
    swaps identity has fallen by 0.19 / 0.22 here, docs/RESCHEDULING.md.)"""
    refs = json.loads((ASSETS / "references/index.json").read_text())
    engine = StreamingEngine.from_checkpoint(os.environ.get("FASHIONCHAMELEON_CHECKPOINT", DEFAULT_CHECKPOINT))
    garments = CASES[ref_i]
    imgs = [read_image(str(ASSETS / "garments" / g)) for g in garments]
    h = stream_health(engine, read_image(str(ASSETS / refs[ref_i]["file"])), imgs[0], refs[ref_i]["prompt"], FRAMES,
                      Evaluator(), swap_garments=imgs[1:], swap_every=SWAP_EVERY)
    early, late = h["early"], h["late"]
    print(json.dumps(h))
    assert len(h["swaps"]) == FRAMES // SWAP_EVERY and len(h["swaps"]) % len(garments) == 0
    for k in ("person_area", "contrast", "sharpness"):
        assert KEEP * early[k] <= late[k] <= early[k] / KEEP, (k, early[k], late[k])
    assert late["fidelity"] >= early["fidelity"] - FIDELITY_DROP
    assert late["identity"] >= early["identity"] - IDENTITY_DROP, (early["identity"], late["identity"])
