"""Pre-encode a stage's training clips with its frozen VAE, once, for `data.latent_cache`.

    python -m teacher.cache_latents --config teacher/configs/tiny_wide_gpu.yaml --out runs/cache_wide --clips 20000
    python -m teacher.cache_latents --config distill/configs/tf_tiny_v28.yaml --out runs/cache_tf --clips 4000

Reads the config's `model` and `data` sections (any teacher or teacher-forcing config): the same VAE, clip length,
size, source and loss masks the stage would use. Clips are the training split's first `--clips` items of
`data.source`. Then train with `data.latent_cache: <out>` in the config (or the stage's `--latent-cache`).

Why: on the CPU a third of each teacher step is the VAE's encoder; on the GPU (run 5) two thirds of each step
waited for the data workers. With the cache, a step is the transformer alone (docs/TRAINING.md, session 18).
`--max-minutes` stops early and keeps what was written, so a lease can budget the build.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fashionchameleon.data.latent_cache import LatentCacheWriter, module_fingerprint
from fashionchameleon.trainer import dataclass_from_dict, load_yaml_config
from teacher.common import (COVERAGE_OF_MASK, DataConfig, ModelConfig, Triplets, build_dataset, build_stage_vae,
                            encode_batch, latent_coverage)


def load_sections(path: str) -> tuple[ModelConfig, DataConfig]:
    """The `model` and `data` sections of any teacher or teacher-forcing config."""
    cfg = load_yaml_config(path, {"model": ModelConfig, "data": DataConfig}, other_sections=True)
    return cfg["model"], cfg["data"]


def build_cache(model_cfg: ModelConfig, data: DataConfig, out: str | Path, clips: int, *, split: str = "train",
                batch_size: int = 16, workers: int = 0, dtype: str = "float32", shard_size: int = 1024,
                max_minutes: float | None = None, device: str = "auto", config: str | None = None) -> dict[str, Any]:
    if clips < 1:
        raise ValueError(f"--clips must be >= 1, got {clips}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    preset, vae = build_stage_vae(model_cfg)  # the stage's VAE, without loading its transformer
    fingerprint = module_fingerprint(vae)  # of the fp32 weights, as `training_dataset` computes it
    vae.to(dev)
    ds = Triplets(build_dataset(data, preset, split, clips, data.seed))
    n = min(clips, len(ds))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(n)), batch_size=batch_size,
                                         shuffle=False, num_workers=workers)
    meta = {"vae": str(model_cfg.vae or model_cfg.init or model_cfg.pretrained or "preset (random)"),
            "vae_fingerprint": fingerprint, "frames": data.frames, "height": preset.height,
            "width": preset.width, "preset": preset.name, "source": data.source, "root": data.root,
            "split": split, "seed": data.seed, "config": config,
            "coverage_weights": {"garment": data.garment_loss_weight, "body": data.body_loss_weight}}
    writer = LatentCacheWriter(out, meta, shard_size=shard_size, dtype=dtype)
    start = time.perf_counter()
    done = 0
    with torch.no_grad():
        for batch in tqdm(loader, desc="cache", unit="batch"):
            ref, gar, vid = encode_batch(vae, batch, dev)
            tensors = {"reference": ref, "garment": gar, "video": vid}
            for mask_key, cov_key in COVERAGE_OF_MASK.items():
                if mask_key in batch:
                    tensors[cov_key] = latent_coverage(batch[mask_key], vid.shape, preset.temporal_factor)
            writer.add(tensors, list(batch["prompt"]))
            done += vid.shape[0]
            if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
                print(f"cache: --max-minutes {max_minutes} reached after {done} of {n} clips; keeping those",
                      flush=True)
                break
    writer.meta["seconds"] = round(time.perf_counter() - start, 2)
    return writer.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a teacher or teacher-forcing config (its model/data sections)")
    ap.add_argument("--out", required=True, help="new cache folder")
    ap.add_argument("--clips", type=int, required=True)
    ap.add_argument("--split", default="train", choices=("train", "val", "test"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0, help="data workers rendering / reading clips")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--shard-size", type=int, default=1024, help="clips per safetensors shard")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop early, keeping the clips written")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--init", help="stage folder whose VAE the stage will use (overrides model.init, as the stage's "
                                   "own --init does)")
    ap.add_argument("--vae", help="frozen VAE folder (overrides model.vae, as the stage's own --vae does)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg, data = load_sections(args.config)
    over = {k: v for k, v in (("init", args.init), ("vae", args.vae)) if v}
    if over:
        model_cfg = dataclass_from_dict(ModelConfig, {**vars(model_cfg), **over})
    meta = build_cache(model_cfg, data, args.out, args.clips, split=args.split, batch_size=args.batch_size,
                       workers=args.workers, dtype=args.dtype, shard_size=args.shard_size,
                       max_minutes=args.max_minutes, device=args.device, config=args.config)
    summary = {k: meta[k] for k in ("clips", "frames", "height", "width", "dtype", "seconds")}
    print({"out": args.out, **summary}, flush=True)
    return meta


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
