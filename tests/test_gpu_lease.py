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


def _lease(tmp_path, *args) -> tuple[subprocess.CompletedProcess, Path]:
    """`gpu_lease.sh ARGS` with SMOKE=1 in a copy of the tree (the script writes runs/ where it runs)."""
    work = tmp_path / "repo"
    for part in ("fashionchameleon", "teacher", "distill", "benchmarks"):
        shutil.copytree(ROOT / part, work / part, ignore=shutil.ignore_patterns("__pycache__"))
    for ckpt in ("vae_tiny_dec", "teacher_tiny"):
        shutil.copytree(ROOT / "assets/checkpoints" / ckpt, work / "assets/checkpoints" / ckpt)
    out = tmp_path / "OUT"
    env = {**os.environ, "OUT": str(out), "SMOKE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["bash", "benchmarks/gpu_lease.sh", *args], cwd=work, env=env, capture_output=True,
                       text=True, timeout=900)
    return r, out


def _unpack(tmp_path, out: Path) -> dict:
    back = tmp_path / "back"
    back.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/unpack_lease.py"), "--from", str(out), "--root",
                        str(back), "--vae", str(ROOT / "assets/checkpoints/vae_tiny_dec")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_all_wide_smoke_call_packs_what_comes_back(tmp_path):
    r, out = _lease(tmp_path, "all_wide")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and sum(p.stat().st_size for p in files) <= 64 * MiB
    assert all(p.stat().st_size <= 16 * MiB for p in files)
    assert "left out" not in r.stdout
    # the teacher and TF trained from latent caches built in the same call, not from clips rendered per step
    assert "latent cache failed" not in r.stdout
    meta = json.loads((tmp_path / "repo/runs/cache_wide/meta.json").read_text())
    assert meta["clips"] == 8 and meta["dtype"] == "float16" and meta["frames"] == 21
    meta = json.loads((tmp_path / "repo/runs/cache_tf/meta.json").read_text())  # teacher forcing's own clips
    assert meta["clips"] == 8 and meta["frames"] == 33
    # here: benchmarks/unpack_lease.py extracts, restores the VAE the archives leave out, builds the DMD stages
    back = tmp_path / "back"
    summary = _unpack(tmp_path, out)
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


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_all_wide_distils_the_published_teacher_when_the_wide_one_fails(tmp_path):
    r, out = _lease(tmp_path, "all_wide", "not-a-number")  # the teacher stage rejects its --max-minutes
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "distilling assets/checkpoints/teacher_tiny instead" in r.stdout
    assert not (out / "teacher_wide.tgz").exists() and (out / "tf.tgz").is_file()
    summary = _unpack(tmp_path, out)
    assert summary["vae_restored"] == ["runs/gpu_tf/final"]
    student = next(p for p in summary["dmd_stages"] if not p.endswith("_critic"))
    code = ("import sys; from teacher.common import load_stage;"
            "assert load_stage(sys.argv[1]).transformer.config.attention_head_dim == 32")  # the published shape
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "back" / student)], cwd=ROOT, check=True, timeout=300)
