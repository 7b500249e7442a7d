"""Held-out PSNR of demo VAEs on clean and noisy latents (how a decoder handles a diffusion model's latent error).

    python benchmarks/vae_noise_psnr.py --vae v24=assets/checkpoints/fashionchameleon-tiny/vae \
        --vae vae_tiny=assets/checkpoints/vae_tiny --vae vae_tiny_dec=assets/checkpoints/vae_tiny_dec \
        --json docs/results/vae_decoder_finetune.json

Same clips and noise seed as `teacher/train_vae.py`'s evaluation (16 val-split and 16 test-split 9-frame clips).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashionchameleon.vae import load_vae  # noqa: E402
from teacher.train_vae import DataConfig, evaluate_psnr, world_dataset  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", action="append", required=True, help="name=DIR (repeatable)")
    ap.add_argument("--noise", default="0,0.2,0.4", help="latent noise levels (normalised units)")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    d = DataConfig()
    val = world_dataset("val", d, a.clips, d.val_seed)
    test = world_dataset("test", d, a.clips, d.val_seed)
    val_clips = [val[i]["video"] for i in range(a.clips)]
    test_clips = [test[i]["video"] for i in range(a.clips)]
    out = {}
    for spec in a.vae:
        name, _, path = spec.partition("=")
        v = load_vae(path).float()
        out[name] = {f"val_noise{n:g}": round(evaluate_psnr(v, val_clips, 4, n), 2)
                     for n in map(float, a.noise.split(","))}
        out[name]["test_noise0"] = round(evaluate_psnr(v, test_clips, 4, 0.0), 2)
        print(name, out[name], flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
