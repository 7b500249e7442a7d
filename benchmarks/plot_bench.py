"""Plot a `fashionchameleon bench --json` result: per-stage time breakdown and FPS over the run.

    pip install -e ".[bench]"
    python benchmarks/plot_bench.py docs/results/cpu_tiny.json --out docs/figures/bench_cpu_tiny.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE_ORDER = ("encode", "reschedule", "denoise_0", "denoise_1", "denoise_2", "denoise_3", "cache_write", "decode")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+", help="bench JSON file(s); several are drawn side by side")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    runs = [json.loads(Path(j).read_text()) for j in a.json]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = []
    for i, r in enumerate(runs):
        label = f"{r['preset']} {r['device']} {r.get('dtype', '')}".strip()
        labels.append(label)
        bottom = 0.0
        stages = r["stage_ms"]
        names = [s for s in STAGE_ORDER if s in stages] + sorted(set(stages) - set(STAGE_ORDER))
        for j, s in enumerate(names):
            ax1.bar(i, stages[s], bottom=bottom, color=plt.cm.tab10(j % 10), label=s if i == 0 else None)
            bottom += stages[s]
        ax1.text(i, bottom, f"{r['chunk_ms']:.0f} ms/chunk", ha="center", va="bottom", fontsize=8)
        fps = r.get("fps_per_chunk", [])
        ax2.plot(range(len(fps)), fps, label=f"{label} (steady {r['fps']:.1f} fps)")
    ax1.set_xticks(range(len(runs)), labels, fontsize=8)
    ax1.set_ylabel("ms per chunk (mean over steady chunks)")
    ax1.set_title("Per-stage time per chunk")
    ax1.legend(fontsize=7)
    ax2.axhline(runs[0].get("target_fps", 24), color="gray", ls="--", lw=1, label="target fps")
    ax2.set_xlabel("chunk")
    ax2.set_ylabel("frames / s (per chunk)")
    ax2.set_title("FPS over the run (swaps every %s frames)" % runs[0].get("swap_every", "?"))
    ax2.legend(fontsize=7)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
