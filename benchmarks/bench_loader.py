"""What a training batch costs before it reaches the model: rendering, packing and collating on one CPU thread.

    python benchmarks/bench_loader.py --config teacher/configs/tiny_gpu.yaml --batch 32

Compares the float32 items the datasets return with the uint8 items the stages ship (`teacher.common.Triplets`):
render time, bytes per batch and `default_collate` time (the copy each data worker makes before sending the batch),
and what packing float items to uint8 would cost instead of rendering uint8 directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashionchameleon.configs import get_preset  # noqa: E402
from fashionchameleon.trainer import load_yaml_config  # noqa: E402
from teacher.common import KEEP_KEYS, build_dataset, pack_pixels  # noqa: E402
from teacher.train_teacher import SECTIONS  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="teacher/configs/tiny_gpu.yaml")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_yaml_config(a.config, SECTIONS)
    ds = build_dataset(cfg["data"], get_preset(cfg["model"].preset), "train", 10 ** 6, cfg["data"].seed)
    res: dict = {"batch": a.batch, "frames": cfg["data"].frames}
    t = time.perf_counter()
    raw = [{k: d[k] for k in KEEP_KEYS if k in d} for d in (ds[i] for i in range(a.batch))]
    res["render_fp32_s"] = time.perf_counter() - t
    t = time.perf_counter()
    packed = [pack_pixels(d) for d in raw]
    res["pack_s"] = time.perf_counter() - t
    ds.uint8 = True  # what Triplets asks of the datasets: uint8 straight from the renderer
    t = time.perf_counter()
    native = [{k: d[k] for k in KEEP_KEYS if k in d} for d in (ds[i] for i in range(a.batch))]
    res["render_uint8_s"] = time.perf_counter() - t
    assert all(torch.equal(p["video"], n["video"]) for p, n in zip(packed, native))
    for name, items in (("fp32", raw), ("uint8", native)):
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            b = default_collate(items)
            times.append(time.perf_counter() - t)
        res[f"{name}_collate_s"] = sorted(times)[len(times) // 2]
        res[f"{name}_mb"] = sum(v.numel() * v.element_size() for v in b.values() if torch.is_tensor(v)) / 1e6
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))
    return res


if __name__ == "__main__":
    main()
