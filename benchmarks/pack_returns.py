"""Pack a lent GPU's results into $OUT within what the device tool brings back.

The tool returns at most 8 files of 16 MiB each, 64 MiB together (../.library/device/README.md); anything over is
lost with the machine. A 7 M-parameter stage (the wide teacher) is 28 MB in fp32, so `gpu_lease.sh` packed archives
that could never come back. Here each item is staged, its large safetensors are halved to fp16 (every loader casts
back to fp32: `teacher.common.load_stage`, `distill.make_stage`), and items are grouped into archives in the order
given, the most wanted first; an item that no longer fits is named in a `left out:` line, not silently dropped.

    python benchmarks/pack_returns.py --out $OUT --name teacher --drop vae runs/gpu_teacher/final runs/gpu_teacher/log.csv

One archive is `NAME.tgz`; more are `NAME_0.tgz`, `NAME_1.tgz`, ... Paths keep their place relative to the working
directory, so `tar xzf` on the CPU side restores them where the stage code expects them.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MiB = 2**20


@dataclass(frozen=True)
class Limits:
    """The device tool's return limits, less a margin for tar headers and files written after packing."""

    max_files: int = 8
    file_bytes: int = 16 * MiB
    total_bytes: int = 64 * MiB
    margin_bytes: int = MiB // 2
    reserve_files: int = 0  # files the caller still means to write (a closing log, say)


def halve(path: Path) -> None:
    """Rewrite a safetensors file's fp32 tensors as fp16, in place."""
    sd = load_file(str(path))
    out = {k: (v.half() if v.dtype == torch.float32 else v).contiguous() for k, v in sd.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(out, str(tmp))
    tmp.replace(path)


def _size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def stage_item(item: Path, root: Path, drop: set[str], halve_bytes: int) -> Path:
    """Copy `item` under `root` at its relative path, without folders named in `drop`; halve large weights."""
    if item.is_absolute():
        raise ValueError(f"{item}: give paths relative to the working directory (they are restored there)")
    dest = root / item
    dest.parent.mkdir(parents=True, exist_ok=True)
    if item.is_dir():
        shutil.copytree(item, dest, ignore=lambda _d, names: [n for n in names if n in drop])
    else:
        shutil.copy2(item, dest)
    for f in [dest] if dest.is_file() else sorted(dest.rglob("*.safetensors")):
        if f.suffix == ".safetensors" and f.stat().st_size >= halve_bytes:
            halve(f)
    return dest


def plan(sizes: list[tuple[str, int]], used_files: int, used_bytes: int, lim: Limits) -> tuple[list[list[str]], list[str]]:
    """Greedy, in order: fill an archive while it stays under the file limit, open another while the count and
    the total allow it. Sizes are uncompressed (gzip gains little on weights), so the plan is conservative."""
    cap = lim.file_bytes - lim.margin_bytes
    files_left = lim.max_files - used_files - lim.reserve_files
    bytes_left = lim.total_bytes - used_bytes - lim.margin_bytes
    groups: list[list[str]] = []
    group_bytes: list[int] = []
    left_out: list[str] = []
    for name, size in sizes:
        if size > cap or size > bytes_left:
            left_out.append(name)
            continue
        if groups and group_bytes[-1] + size <= cap:
            groups[-1].append(name)
            group_bytes[-1] += size
        elif len(groups) < files_left:
            groups.append([name])
            group_bytes.append(size)
        else:
            left_out.append(name)
            continue
        bytes_left -= size
    return groups, left_out


def pack(items: list[str], out: Path, name: str, drop: set[str] = frozenset(), halve_mb: float = 12.0,
         lim: Limits = Limits()) -> tuple[list[Path], list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    present = [Path(i) for i in items if Path(i).exists()]
    missing = [i for i in items if not Path(i).exists()]
    existing = [f for f in out.rglob("*") if f.is_file()]
    with tempfile.TemporaryDirectory(prefix=f"pack_{name}_") as tmp:
        root = Path(tmp)
        staged = {str(p): stage_item(p, root, set(drop), int(halve_mb * MiB)) for p in present}
        groups, left_out = plan([(k, _size(v)) for k, v in staged.items()], len(existing),
                                sum(f.stat().st_size for f in existing), lim)
        archives = []
        for i, group in enumerate(groups):
            path = out / (f"{name}.tgz" if len(groups) == 1 else f"{name}_{i}.tgz")
            with tarfile.open(path, "w:gz") as tar:
                for item in group:
                    tar.add(staged[item], arcname=item)
            archives.append(path)
    return archives, left_out + missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("items", nargs="+", help="files or folders, most wanted first")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--drop", action="append", default=[], help="folder name to leave out (repeatable)")
    ap.add_argument("--halve-mb", type=float, default=12.0, help="safetensors at least this large go to fp16")
    ap.add_argument("--reserve-files", type=int, default=0, help="files to leave free in OUT for later writes")
    a = ap.parse_args(argv)
    archives, left_out = pack(a.items, a.out, a.name, set(a.drop), a.halve_mb, Limits(reserve_files=a.reserve_files))
    for p in archives:
        print(f"packed {p} ({p.stat().st_size / MiB:.1f} MiB)")
    for item in left_out:
        print(f"left out: {item} (missing, or over the device tool's return limits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
