"""benchmarks/gpu_lease.sh as a lent GPU would run it, on the smoke sections (SMOKE=1): the wide chain's stages hand
their folders on, and what comes back fits the device tool's limits and loads on the CPU side."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_all_wide_smoke_call_packs_what_comes_back(tmp_path):
    work = tmp_path / "repo"  # a copy: the script writes runs/ where it runs
    for part in ("fashionchameleon", "teacher", "distill", "benchmarks"):
        shutil.copytree(ROOT / part, work / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "assets/checkpoints/vae_tiny_dec", work / "assets/checkpoints/vae_tiny_dec")
    out = tmp_path / "OUT"
    env = {**os.environ, "OUT": str(out), "SMOKE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["bash", "benchmarks/gpu_lease.sh", "all_wide"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and sum(p.stat().st_size for p in files) <= 64 * MiB
    assert all(p.stat().st_size <= 16 * MiB for p in files)
    assert "left out" not in r.stdout
    back = tmp_path / "back"
    for a in out.glob("*.tgz"):
        with tarfile.open(a) as tar:
            tar.extractall(back, filter="data")
    snaps = sorted(back.glob("runs/gpu_dmd/step_*/ema_generator_rank0.safetensors"))
    assert (back / "runs/gpu_teacher_wide/final/preset.json").is_file() and snaps
    assert (back / "runs/gpu_tf/final/transformer").is_dir() and (snaps[-1].parent / "critic").is_dir()
    # the CPU side restores the VAE the archives leave out, then builds a stage folder from the last snapshot
    for stage in ("gpu_teacher_wide", "gpu_tf"):
        shutil.copytree(ROOT / "assets/checkpoints/vae_tiny_dec", back / f"runs/{stage}/final/vae")
    code = (
        "import sys; from distill.make_stage import main; from teacher.common import load_stage;"
        "main(['--weights', sys.argv[1], '--like', sys.argv[2], '--out', sys.argv[3]]);"
        "t = load_stage(sys.argv[4]).transformer; s = load_stage(sys.argv[3]).transformer;"
        "assert t.config.attention_head_dim == 64 and s.config.ffn_dim == 1024;"
        "assert next(s.parameters()).dtype.is_floating_point and str(next(s.parameters()).dtype) == 'torch.float32'"
    )
    subprocess.run([sys.executable, "-c", code, str(snaps[-1]), str(back / "runs/gpu_tf/final"),
                    str(tmp_path / "student"), str(back / "runs/gpu_teacher_wide/final")], cwd=ROOT, check=True,
                   timeout=300)
