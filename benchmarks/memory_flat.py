"""Stream N frames with the tiny preset and check that host RSS stays flat (rolling KV cache, bounded state).

    python benchmarks/memory_flat.py --frames 10000 --json out/memory_flat.json

Passes when RSS at every sample between frame 1,000 and the end stays within ±5% of the RSS at frame 1,000.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fashionchameleon.bench import host_rss_bytes, run_stream
from fashionchameleon.stream import StreamingEngine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint", default=None, help="trained checkpoint (default: random weights of --preset)")
    p.add_argument("--swap-every", type=int, default=480)
    p.add_argument("--policy", default="disentangle")
    p.add_argument("--sample-every", type=int, default=250)
    p.add_argument("--start", type=int, default=1_000, help="frame whose RSS is the reference")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    engine = (StreamingEngine.from_checkpoint(a.checkpoint) if a.checkpoint
              else StreamingEngine.from_preset(a.preset, random_weights=True))
    t0 = time.perf_counter()
    res = run_stream(engine, a.frames, a.swap_every, a.policy, warmup_chunks=2, seed=0, rss_every=a.sample_every)
    trace = res["rss_trace"]
    base = next(r for f, r in trace if f >= a.start)
    window = [r for f, r in trace if f >= a.start]
    lo, hi = min(window) / base - 1, max(window) / base - 1
    ok = abs(lo) <= a.tolerance and abs(hi) <= a.tolerance
    out = {
        "frames": res["frames"], "preset": engine.preset.name, "checkpoint": engine.checkpoint,
        "policy": a.policy, "swap_every": a.swap_every, "wall_s": time.perf_counter() - t0, "fps": res["fps"],
        "rss_at_start_bytes": base, "rss_min_rel": lo, "rss_max_rel": hi, "tolerance": a.tolerance, "flat": ok,
        "kv_cache_bytes": res["kv_cache_bytes"], "rss_final_bytes": host_rss_bytes(), "trace": trace,
        "torch": torch.__version__,
    }
    print(json.dumps({k: v for k, v in out.items() if k != "trace"}, indent=2))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
