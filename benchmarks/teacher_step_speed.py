"""CPU/GPU speed of one teacher training step (forward + backward + AdamW) on cached latents, eager or compiled.

    python benchmarks/teacher_step_speed.py --config teacher/configs/tiny_cpu_cont20.yaml --mode eager --threads 2
    python benchmarks/teacher_step_speed.py --config ... --mode compile [--bf16] [--batch-size 8]

Needs the config's latent cache. Prints seconds per step after warm-up steps (compilation included there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from fashionchameleon.trainer import load_yaml_config
from teacher.common import build_components, training_dataset, wrap
from teacher.train_teacher import SECTIONS, make_step_fn


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--mode", choices=("eager", "compile"), default="eager")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_yaml_config(a.config, SECTIONS)
    comp = build_components(cfg["model"])
    ds = training_dataset(cfg["data"], comp, a.batch_size, 0)
    batch = torch.utils.data.default_collate([ds[i] for i in range(a.batch_size)])
    if a.mode == "compile":
        comp.transformer = torch.compile(comp.transformer)
    model = wrap(comp)
    # the trainer's own step function (region + bell weighting), called outside the Trainer to time only the step
    step_fn = make_step_fn(comp, cfg["data"])
    ctx = SimpleNamespace(models={"teacher": model}, accelerator=Accelerator(cpu=True), device=torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext()

    def step():
        with cast:
            loss = step_fn(ctx, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    res = {"mode": a.mode, "bf16": a.bf16, "batch_size": a.batch_size, "threads": a.threads,
           "s_per_step": (time.perf_counter() - t0) / a.steps, "torch": torch.__version__}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
