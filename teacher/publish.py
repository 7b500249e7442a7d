"""Publish a finished teacher run as a small committed checkpoint (fp16 weights, loss curve, model card).

    python -m teacher.publish --run runs/teacher_tiny --out assets/checkpoints/teacher_tiny \
        [--sheet docs/figures/teacher_heldout_sheet.png]

`load_stage` casts the fp16 weights back to fp32, so the published folder initialises stage 2 like `final/` does.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from teacher.common import load_stage, plot_curves, save_stage


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="teacher output dir (with final/, log.csv, result.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sheet", help="held-out contact sheet to reference in the card")
    ap.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    args = ap.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    comp = load_stage(run / "final")
    card = (run / "final" / "README.md").read_text()
    if args.sheet:
        card += f"\nHeld-out contact sheet: `{args.sheet}` (rows: generated, then the real clip of the same triplet).\n"
    res = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
    vae_info = run.parent / "teacher_tiny_vae" / "best.json"
    if vae_info.is_file():
        card += f"\nFrozen VAE: demo FastVAE snapshot {vae_info.read_text().strip()} (val PSNR in dB).\n"
    save_stage(out, comp, card, half=not args.fp32)
    plot_curves(run / "log.csv", ["loss"], out / "loss.png", "teacher: FM loss")
    shutil.copy(run / "log.csv", out / "log.csv")
    if res:
        (out / "result.json").write_text(json.dumps(res, indent=2))
    print(out)
    return out


if __name__ == "__main__":
    main()
