"""benchmarks/gpu_lease.sh as a lent GPU would run it, on the smoke sections (SMOKE=1): the wide chain's stages hand
their folders on, and what comes back fits the device tool's limits and loads on the CPU side."""

import json
import os
import shutil
import subprocess
import sys
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
    # here: benchmarks/unpack_lease.py extracts, restores the VAE the archives leave out, builds the DMD stages
    back = tmp_path / "back"
    back.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/unpack_lease.py"), "--from", str(out), "--root",
                        str(back), "--vae", str(ROOT / "assets/checkpoints/vae_tiny_dec")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert sorted(Path(p).parts[1] for p in summary["vae_restored"]) == ["gpu_teacher_wide", "gpu_tf"]
    students = [Path(p) for p in summary["dmd_stages"] if not p.endswith("_critic")]
    assert students and any(p.endswith("_critic") for p in summary["dmd_stages"])
    code = (
        "import sys; from teacher.common import load_stage; from distill.train_dmd import load_critic;"
        "t = load_stage(sys.argv[1]).transformer; s = load_stage(sys.argv[2]).transformer;"
        "c = load_critic(sys.argv[2] + '_critic');"
        "assert t.config.attention_head_dim == 64 and s.config.ffn_dim == 1024 and c.config.ffn_dim == 1024;"
        "assert str(next(s.parameters()).dtype) == 'torch.float32'"
    )
    subprocess.run([sys.executable, "-c", code, str(back / "runs/gpu_teacher_wide/final"), str(back / students[-1])],
                   cwd=ROOT, check=True, timeout=300)
