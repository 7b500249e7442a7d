"""Where a teacher training step spends its time: render, frozen-VAE encode, forward, backward + AdamW.

    OMP_NUM_THREADS=1 python benchmarks/profile_teacher_step.py --config teacher/configs/tiny_garment.yaml \
        --batch 4 --steps 6 --threads 1 [--json out.json]

Builds the stage's networks and data exactly as `teacher.train_teacher` does (same config file), renders one batch
and times each part of the step with the model in train mode. The first step (allocation, lazy init) is dropped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import default_collate

from fashionchameleon.trainer import load_yaml_config
from teacher import train_teacher
from teacher.common import (KEEP_KEYS, Triplets, build_components, build_dataset, drop_prompts, encode_batch,
                            incontext_flow, per_frame_bell_mse, region_loss_weight)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.steps < 2:
        ap.error("--steps must be >= 2 (the first step is dropped as warm-up)")
    torch.set_num_threads(a.threads)
    cfg = load_yaml_config(a.config, train_teacher.SECTIONS)
    model_cfg, data = cfg["model"], cfg["data"]
    comp = build_components(model_cfg)
    ds = Triplets(build_dataset(data, comp.preset, "train", a.batch * a.steps, data.seed))
    tr, text_enc, fm = comp.transformer.train(), comp.text_encoder, comp.fm
    params = list(tr.parameters()) + [p for p in text_enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    parts: dict[str, list[float]] = {"render": [], "vae_encode": [], "forward": [], "backward_adamw": []}
    for s in range(a.steps):
        t0 = time.perf_counter()
        batch = default_collate([{k: v for k, v in ds[s * a.batch + i].items() if k in KEEP_KEYS}
                                 for i in range(a.batch)])
        t1 = time.perf_counter()
        ref, gar, vid = encode_batch(comp.vae, batch, "cpu")
        t2 = time.perf_counter()
        t = fm.sample_train_timesteps((vid.shape[0],))
        noise = torch.randn_like(vid)
        text = text_enc(drop_prompts(batch["prompt"], data.text_dropout))
        v = incontext_flow(tr, ref, gar, fm.add_noise(vid, noise, t), t, text)
        region = region_loss_weight(batch, vid.shape, comp.preset.temporal_factor, data)
        loss = per_frame_bell_mse(fm, v, fm.training_target(vid, noise), t, data.loss_weighting, region)
        t3 = time.perf_counter()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if s:
            for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[k].append(dt)
    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(med.values())
    res = {"config": a.config, "batch": a.batch, "threads": a.threads, "steps_timed": a.steps - 1,
           "median_s": med, "share": {k: v / total for k, v in med.items()}, "step_s": total,
           "transformer_params": sum(p.numel() for p in tr.parameters()), "torch": torch.__version__}
    for k in parts:
        print(f"{k:>15}: {med[k]:.3f} s ({res['share'][k]:.0%})")
    print(f"{'step':>15}: {total:.3f} s at batch {a.batch}, {a.threads} thread(s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
