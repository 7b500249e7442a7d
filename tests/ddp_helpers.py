"""Launch a module under a CPU DDP group (gloo, loopback rendezvous) and read per-rank trainer state."""
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
NPROC = 2


def launch(module: str, *args: str) -> None:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
           "-m", module, *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{module} failed under DDP:\n{r.stderr[-4000:]}"


def rank_emas(step_dir: Path, name: str) -> list[dict]:
    return [load_file(str(step_dir / f"ema_{name}_rank{r}.safetensors")) for r in range(NPROC)]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
