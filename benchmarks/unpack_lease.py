"""Turn what a `gpu_lease.sh` call brought back into stage folders, here on the CPU side.

    python benchmarks/unpack_lease.py --from /work/.device/<files_at> [--vae assets/checkpoints/vae_tiny_dec]

1. Extracts every `*.tgz` of `--from` into the working directory (the archives hold `runs/...` paths).
2. Restores `vae/` into each returned stage folder (`runs/*/final`): the lease leaves the frozen demo VAE out.
3. Builds a stage folder `runs/gpu_dmd/s<step>` from each returned DMD generator snapshot, like the TF student
   (`distill.make_stage`), and copies a returned critic to `runs/gpu_dmd/s<step>_critic` the same way.
Prints one JSON summary (paths relative to `--root`). Next: `FASHIONCHAMELEON_CHECKPOINT=runs/gpu_dmd/sN pytest tests/test_long_stream.py` to
select a step, then the held-out eval (docs/TRAINING.md, run 5).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tarfile
from pathlib import Path

from fashionchameleon.stream import PRESET_FILE

DEMO_VAE = "assets/checkpoints/vae_tiny_dec"


def extract(src: Path, dest: Path) -> list[str]:
    names = []
    for archive in sorted(src.glob("*.tgz")):
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths and links out of dest
        names.append(archive.name)
    return names


def restore_vae(root: Path, vae: Path) -> list[str]:
    done = []
    for stage in sorted(root.glob("runs/*/final")):
        if (stage / PRESET_FILE).is_file() and not (stage / "vae").exists():
            shutil.copytree(vae, stage / "vae")
            done.append(str(stage.relative_to(root)))
    return done


def dmd_stages(root: Path, like: Path) -> list[str]:
    from distill.make_stage import main

    def make_stage(args: list[str]) -> None:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON summary
            main(args)

    # the critic is the teacher's architecture (the same as the student's in these chains)
    teachers = [t for t in (root / "runs/gpu_teacher_wide/final", root / "runs/gpu_teacher/final")
                if (t / PRESET_FILE).is_file()]
    critic_like = teachers[0] if teachers else like
    out = []
    for snap in sorted(root.glob("runs/gpu_dmd/step_*/ema_generator_rank0.safetensors")):
        step = int(snap.parent.name.split("_")[-1])
        dest = root / f"runs/gpu_dmd/s{step}"
        make_stage(["--weights", str(snap), "--like", str(like), "--out", str(dest)])
        out.append(str(dest.relative_to(root)))
        critic = snap.parent / "critic"
        if critic.is_dir():
            make_stage(["--weights", str(critic), "--like", str(critic_like), "--out", f"{dest}_critic"])
            out.append(f"{dest.relative_to(root)}_critic")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, type=Path, help="the folder the lease's files came back to")
    ap.add_argument("--vae", type=Path, default=Path(DEMO_VAE), help="the VAE the lease's stages were trained with")
    ap.add_argument("--root", type=Path, default=Path("."), help="where runs/ lives (the repository root)")
    a = ap.parse_args(argv)
    if not a.src.is_dir():
        ap.error(f"--from {a.src} is not a folder")
    if not (a.vae / "config.json").is_file():
        ap.error(f"--vae {a.vae} is not a VAE folder")
    summary = {"archives": extract(a.src, a.root), "vae_restored": restore_vae(a.root, a.vae)}
    tf = a.root / "runs/gpu_tf/final"
    summary["dmd_stages"] = dmd_stages(a.root, tf) if (tf / PRESET_FILE).is_file() else []
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
