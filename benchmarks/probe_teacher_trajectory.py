"""Where along its own sampling path does the teacher lose the clip? A picture per sigma, two rows per example.

    OMP_NUM_THREADS=2 python benchmarks/probe_teacher_trajectory.py --ckpt assets/checkpoints/teacher_tiny \
        --num 3 --steps 30 --frame 12 --out docs/figures/run8/teacher_trajectory.png [--json out.json]

For held-out triplets (the `teacher.sample` examples), Euler-sample from noise (CFG 1) and keep the x0 the teacher
predicts at each step ("sampled" row). The "data" row gives the x0 the same teacher predicts at the same sigma and
the same noise when its input is the real clip noised to that sigma (what training shows it). Both decode one
pixel frame. Where the two rows part is where the sampler's path leaves what the network was trained on; the JSON
has the PSNR of each against the VAE reconstruction of the real clip, per sigma.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from teacher.common import incontext_flow, load_stage
from teacher.sample import heldout_examples, to_uint8

LABEL_H = 14


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item() / 4.0  # [-1, 1] -> [0, 1] range
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="assets/checkpoints/teacher_tiny")
    ap.add_argument("--num", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--show", type=int, default=8, help="columns: sigmas shown, spread over the steps")
    ap.add_argument("--frame", type=int, default=12, help="pixel frame to decode")
    ap.add_argument("--split", default="test")
    ap.add_argument("--data-seed", type=int, default=12345)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    comp = load_stage(a.ckpt)
    tr, vae, fm, p = comp.transformer.eval(), comp.vae.eval(), comp.fm, comp.preset
    frames = p.pixel_frames(2 * p.stream.chunk_frames)
    if not 0 <= a.frame < frames:
        ap.error(f"--frame must be in [0, {frames})")
    examples = heldout_examples(comp, a.split, a.num, frames, a.data_seed)
    n = fm.num_train_timesteps
    ts = fm.warp((torch.arange(a.steps, dtype=torch.float64) * (-n / a.steps) + n).tolist())  # teacher.sample's grid
    shown = sorted({int(round(i)) for i in np.linspace(0, a.steps - 1, a.show)})
    rows, report = [], []

    with torch.no_grad():
        for i, ex in enumerate(examples):
            ref = vae.encode_image(ex["reference"][None]).float()
            gar = vae.encode_image(ex["garment"][None]).float()
            real = vae.encode_video(ex["video"][None]).float()
            recon = vae.decode(real)[:, :, a.frame]
            text = comp.text_encoder([ex["prompt"]]).float()
            g = torch.Generator().manual_seed(a.seed + i)
            noise = torch.randn(real.shape, generator=g)
            x = noise
            samp, data, rec = [], [], {"sigma": [], "sampled_psnr": [], "data_psnr": []}
            for k, t in enumerate(ts):
                tt = t.reshape(1)
                v = incontext_flow(tr, ref, gar, x, tt, text)
                x0 = fm.x0_from_flow(x, v, tt)
                v_d = incontext_flow(tr, ref, gar, fm.add_noise(real, noise, tt), tt, text)
                x0_d = fm.x0_from_flow(fm.add_noise(real, noise, tt), v_d, tt)
                if k in shown:
                    ps, pd = vae.decode(x0)[:, :, a.frame], vae.decode(x0_d)[:, :, a.frame]
                    samp.append(to_uint8(ps[0]))
                    data.append(to_uint8(pd[0]))
                    rec["sigma"].append(round(float(fm.sigma(t)), 3))
                    rec["sampled_psnr"].append(round(psnr(ps, recon), 2))
                    rec["data_psnr"].append(round(psnr(pd, recon), 2))
                nxt = ts[k + 1] if k + 1 < len(ts) else torch.zeros(())
                x = x + (fm.sigma(nxt) - fm.sigma(t)) * v  # Euler step of the flow ODE
            real_img = to_uint8(recon[0])
            rows.append(np.concatenate([real_img] + samp, axis=1))
            rows.append(np.concatenate([real_img] + data, axis=1))
            report.append(rec)
    sheet = np.concatenate(rows, axis=0)
    w = real_img.shape[1]
    band = np.full((LABEL_H, sheet.shape[1], 3), 255, np.uint8)
    for c, s in enumerate(["VAE recon"] + [f"sigma {s:.2f}" for s in report[0]["sigma"]]):
        cv2.putText(band, s, (c * w + 2, LABEL_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
    sheet = np.concatenate([band, sheet], axis=0)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(a.out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    mean = {k: np.mean([r[k] for r in report], axis=0).round(2).tolist() for k in ("sampled_psnr", "data_psnr")}
    res = {"ckpt": a.ckpt, "frame": a.frame, "steps": a.steps, "sigma": report[0]["sigma"], "mean": mean,
           "per_example": report}
    print(json.dumps({"sigma": res["sigma"], **mean}))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
