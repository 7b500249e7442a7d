"""The real-weight training path at miniature size, as one command: a random-weight Wan2.2-TI2V-5B-layout
directory (`benchmarks/mini_wan.py`), a `data synth` folder in the real-data format, then the shipped
`*wan2.2-5b.yaml` configs (teacher -> teacher forcing -> GR-DMD) with only paths, resolution, clip length and
gradient accumulation changed, and a streamed clip with a swap from the result.

`tests/test_real_weight_path.py` runs the same chain in-process on CPU. This script is for launchers the tests
cannot use, e.g. FSDP on a GPU machine (one GPU is enough to run the FSDP code path):

    python benchmarks/real_path_smoke.py --out runs/real_smoke
    python benchmarks/real_path_smoke.py --out runs/real_smoke_fsdp --launch "accelerate launch --num_processes 1 \
        --mixed_precision bf16 --use_fsdp --fsdp_sharding_strategy FULL_SHARD --fsdp_auto_wrap_policy \
        TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap CausalWanBlock --fsdp_state_dict_type FULL_STATE_DICT"

`--data world` renders mannequin clips instead of writing and reading an mp4 folder, so the run needs no PyAV: a
lent GPU's image lacks it, and its 35 MB wheel no longer fits beside the working tree in a call (64 MiB).

Prints one JSON summary (per stage: step, final losses, seconds; the stream's frame count and swap generation).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MINI_DIR = "Wan2.2-TI2V-5B-mini"
STAGES = (("teacher", "teacher.train_teacher", "teacher/configs/wan2.2-5b.yaml"),
          ("tf", "distill.train_tf", "distill/configs/tf_wan2.2-5b.yaml"),
          ("dmd", "distill.train_dmd", "distill/configs/dmd_wan2.2-5b.yaml"))


def derive(src: str | Path, dest: Path, **sections) -> Path:
    """`src` (relative to the repo) with the given section keys replaced, written to `dest`."""
    cfg = yaml.safe_load((ROOT / src).read_text())
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    dest.write_text(yaml.safe_dump(cfg))
    return dest


# the folder-only keys of the wan2.2-5b data sections, at the values the world source takes
WORLD_DATA = {"source": "world", "root": None, "fps": None, "clip_start": "first"}


def write_configs(d: Path, mini: Path, data: Path | None, size: int, frames: int, accum: int = 2) -> dict[str, Path]:
    """The three derived configs; each stage reads the previous one's `final/` under `d`. `data` None: the world."""
    from fashionchameleon.data.world import WorldConfig

    train = {"grad_accum_steps": accum}  # the 5B configs accumulate 8-16 batches; a tiny folder holds fewer
    # the folder at the rate `data synth` writes, or the world
    clips = {"root": str(data), "frames": frames, "fps": WorldConfig.fps} if data else {**WORLD_DATA, "frames": frames}
    teacher, tf = d / "teacher" / "final", d / "tf" / "final"
    return {
        "teacher": derive(STAGES[0][2], d / "teacher.yaml", train=train, data=clips,
                          model={"pretrained": str(mini), "height": size, "width": size}),
        "tf": derive(STAGES[1][2], d / "tf.yaml", train=train, data=clips, model={"init": str(teacher)}),
        # DMD rolls out its own clips; it reads only reference and garment from the folder
        "dmd": derive(STAGES[2][2], d / "dmd.yaml", data={"root": str(data)} if data else dict(WORLD_DATA),
                      dmd={"teacher": str(teacher)}, model={"init": str(tf)}),
    }


def prepare(d: Path, size: int, frames: int, clips: int, world: bool = False
            ) -> tuple[Path, Path | None, dict[str, Path]]:
    sys.path.insert(0, str(ROOT))
    from benchmarks.mini_wan import build_mini_wan

    d.mkdir(parents=True, exist_ok=True)
    mini = build_mini_wan(d / MINI_DIR)
    if world:
        return mini, None, write_configs(d, mini, None, size, frames)
    from fashionchameleon.data.synth import main as synth

    # clips longer than the training window, so the configs' random windows (data.clip_start) have room to move
    synth(["--out", str(d / "data"), "--clips", str(clips), "--seed", "5", "--size", f"{size}x{size}",
           "--frames", str(2 * frames - 1)])
    return mini, d / "data", write_configs(d, mini, d / "data", size, frames)


def stream_check(stage: Path, data: Path | None, frames: int = 30, swap_at: int = 8) -> dict:
    """A streamed clip with one swap, from the folder's first reference and garments (None: the bundled assets)."""
    from fashionchameleon.data.folder import read_image
    from fashionchameleon.stream import StreamingEngine

    eng = StreamingEngine.from_checkpoint(stage)
    s = eng.new_session()
    if data is None:
        ref = read_image(str(ROOT / "assets/references/ref_00.png"))
        g1, g2 = (read_image(str(ROOT / "assets/garments" / n)) for n in ("tshirt_solid_00.png", "tank_dots_10.png"))
    else:
        ref = read_image(str(data / "src" / "000000.png"))
        g1, g2 = (read_image(str(data / "cloth" / f"00000{i}.png")) for i in (0, 1))
    gens = []
    for f in s.start(ref, g1, "walks forward", max_frames=frames, seed=3):
        if f.index == swap_at:
            s.request_swap(g2)
        gens.append(f.swap_generation)
    return {"frames": len(gens), "swap_generation_last": gens[-1], "first_new_garment_frame": gens.index(1)
            if 1 in gens else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--launch", default=f"{sys.executable} -m",
                    help="command that runs a module (default: this python); its last word is followed by the module")
    ap.add_argument("--size", type=int, default=64, help="square resolution, a multiple of 32")
    ap.add_argument("--frames", type=int, default=21, help="pixel frames per clip (1 + 4k)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--data", choices=["folder", "world"], default="folder",
                    help="folder: a `data synth` mp4 folder (needs PyAV); world: rendered clips (no PyAV)")
    ap.add_argument("--expect", help="fail unless every stage ran with this accelerate distributed type (e.g. FSDP): "
                                     "accelerate falls back silently when the launcher's flags do not apply")
    args = ap.parse_args(argv)
    d = Path(args.out)
    mini, data, cfgs = prepare(d, args.size, args.frames, args.clips, world=args.data == "world")
    launch = shlex.split(args.launch)
    if launch[-1] != "-m":
        launch.append("-m")  # accelerate launch takes `-m module` too
    summary: dict = {"launch": args.launch, "stages": {}}
    for name, module, _ in STAGES:
        t0 = time.perf_counter()
        cmd = [*launch, module, "--config", str(cfgs[name]), "--smoke", "--out", str(d / name)]
        # keep the caller's PYTHONPATH (gpu_lease.sh installs the carried wheels there)
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": path})
        res_file = d / name / "result.json"
        res = json.loads(res_file.read_text()) if res_file.is_file() else {}
        keep = ("step", "loss", "gen_loss", "critic_loss", "distributed_type", "num_processes", "mixed_precision")
        summary["stages"][name] = {"rc": r.returncode, "seconds": round(time.perf_counter() - t0, 1),
                                   **{k: v for k, v in res.items() if k in keep}}
        if r.returncode:
            print(json.dumps(summary, indent=2))
            if args.json:
                Path(args.json).write_text(json.dumps(summary, indent=2))
            raise SystemExit(f"{name} failed (rc {r.returncode}): {' '.join(cmd)}")
    ran = {n: st.get("distributed_type") for n, st in summary["stages"].items()}
    if args.expect and any(t != args.expect for t in ran.values()):
        summary["error"] = f"expected {args.expect}, ran {ran}"
    summary["stream"] = stream_check(d / "dmd" / "final", data)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if "error" in summary:
        raise SystemExit(summary["error"])
    return summary


if __name__ == "__main__":
    main()
