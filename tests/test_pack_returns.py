"""benchmarks/pack_returns.py: what a GPU lease packs must fit the device tool's return limits and load back."""

import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pack_returns  # noqa: E402
from pack_returns import MiB, Limits, pack, plan  # noqa: E402


def _weights(path: Path, mib: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"w": torch.randn(int(mib * MiB) // 4, generator=g), "step": torch.tensor([7])}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return sd


def test_plan_respects_count_size_and_order():
    lim = Limits(max_files=3, file_bytes=10, total_bytes=25, margin_bytes=0)
    groups, left = plan([("a", 6), ("b", 3), ("c", 6), ("big", 11), ("d", 6), ("e", 6)], used_files=1,
                        used_bytes=2, lim=lim)
    assert groups == [["a", "b"], ["c"]]  # 2 archives left beside the one file already in OUT
    assert left == ["big", "d", "e"]  # over one archive; then no archive left
    groups, left = plan([("a", 6), ("b", 6), ("c", 6)], 0, 0, Limits(max_files=8, file_bytes=10, total_bytes=15,
                                                                        margin_bytes=0))
    assert groups == [["a"], ["b"]] and left == ["c"]  # the total, not the count, stops it


def test_wide_stage_comes_back_in_fp16_and_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    big = _weights(Path("runs/t/final/transformer/diffusion_pytorch_model.safetensors"), 20, 0)  # > 16 MiB in fp32
    small = _weights(Path("runs/t/final/text_encoder/model.safetensors"), 0.1, 1)
    _weights(Path("runs/t/final/vae/model.safetensors"), 1, 2)
    Path("runs/t/log.csv").write_text("step,loss\n1,0.5\n")
    out = tmp_path / "OUT"
    archives, left = pack(["runs/t/final", "runs/t/log.csv", "runs/t/missing.json"], out, "teacher", {"vae"})
    assert [a.name for a in archives] == ["teacher.tgz"] and left == ["runs/t/missing.json"]
    assert archives[0].stat().st_size < 16 * MiB
    assert Path("runs/t/final/transformer/diffusion_pytorch_model.safetensors").stat().st_size > 20 * MiB  # source kept
    dest = tmp_path / "back"
    with tarfile.open(archives[0]) as tar:
        tar.extractall(dest, filter="data")
    assert not (dest / "runs/t/final/vae").exists()
    got = load_file(str(dest / "runs/t/final/transformer/diffusion_pytorch_model.safetensors"))
    assert got["w"].dtype == torch.float16 and got["step"].dtype == torch.int64
    torch.testing.assert_close(got["w"].float(), big["w"], rtol=1e-3, atol=1e-4)
    kept = load_file(str(dest / "runs/t/final/text_encoder/model.safetensors"))
    assert torch.equal(kept["w"], small["w"])  # small files stay exact
    assert (dest / "runs/t/log.csv").read_text().startswith("step,loss")


def test_snapshots_split_across_archives_and_overflow_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "log_all.txt").write_text("x" * 1000)
    names = [f"runs/d/step_{i}/ema.safetensors" for i in range(6)]
    for i, n in enumerate(names):
        _weights(Path(n), 20, i)  # 10 MiB each in fp16: one per archive
    assert pack_returns.main(["--out", str(out), "--name", "dmd", *names]) == 0
    printed = capsys.readouterr().out
    archives = sorted(out.glob("dmd_*.tgz"))
    total = sum(f.stat().st_size for f in out.iterdir())
    assert len(archives) == 6 and total <= 64 * MiB and all(a.stat().st_size <= 16 * MiB for a in archives)
    for a, n in zip(archives, names):
        with tarfile.open(a) as tar:
            assert tar.getnames() == [n]  # order kept: the first named is the first archive
    assert "left out" not in printed
    # a second call sees what is already there: 1 log + 6 archives of ~10 MiB leave no room for another
    extra = "runs/d/step_9/ema.safetensors"
    _weights(Path(extra), 20, 9)
    assert pack_returns.main(["--out", str(out), "--name", "more", extra]) == 0
    assert f"left out: {extra}" in capsys.readouterr().out and not list(out.glob("more*"))


def test_absolute_paths_are_refused(tmp_path):
    f = tmp_path / "a.safetensors"
    _weights(f, 0.01, 0)
    with pytest.raises(ValueError, match="relative"):
        pack([str(f)], tmp_path / "OUT", "x")
