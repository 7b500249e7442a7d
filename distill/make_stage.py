"""Stage folders from trainer checkpoints, and copies with other streaming settings.

    # the EMA weights of a checkpoint step, with the preset / VAE / text encoder of stage folder --like
    python -m distill.make_stage --weights runs/tf_v28_ctx/step_000300/ema_student_rank0.safetensors \
        --like runs/tf_v28/final --out runs/tf_v28_ctx/s300 [--stream context_noise=300]
    # a stage folder with streaming settings changed (the weights are copied as they are)
    python -m distill.make_stage --like runs/tf_v28_ctx/s300 --out /tmp/s300_ctx200 --stream context_noise=200
    # a DMD run's critic at a step, in fp16 (its `transformer/` is what ships as a student's `critic/`)
    python -m distill.make_stage --weights runs/dmd12/step_004000/critic --like assets/checkpoints/teacher_tiny \
        --out runs/dmd12_critic_s4000 --half

`--stream KEY=VALUE` (repeatable) replaces `StreamConfig` fields of the preset; values are YAML scalars and the
result is validated like any preset, so a bad key or value fails before anything is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from fashionchameleon.configs import Preset
from fashionchameleon.stream import PRESET_FILE
from teacher.common import stage_from_trainer_export


def parse_stream(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--stream expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="trainer export: a safetensors file or a step_*/<model>_ema folder")
    ap.add_argument("--like", required=True, help="stage folder giving preset, VAE and architecture")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stream", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--half", action="store_true", help="store the --weights in fp16 (the loaders cast back to fp32)")
    a = ap.parse_args(argv)
    like, out = Path(a.like), Path(a.out)
    if not (like / PRESET_FILE).is_file():
        ap.error(f"--like {like} is not a stage folder (missing {PRESET_FILE})")
    if out.resolve() == like.resolve():
        ap.error("--out must differ from --like")
    try:
        overrides = parse_stream(a.stream)
        # validated before anything is written
        preset = Preset.from_dict(json.loads((like / PRESET_FILE).read_text())).with_stream(**overrides)
    except (ValueError, TypeError) as e:
        ap.error(str(e))
    if a.weights:
        if not Path(a.weights).exists():
            ap.error(f"--weights {a.weights} not found")
        stage_from_trainer_export(a.weights, like, out, half=a.half)
    else:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(like, out)
    (out / PRESET_FILE).write_text(json.dumps(preset.to_dict(), indent=2))
    print(f"wrote {out} (stream: {json.dumps(preset.to_dict()['stream'])})")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
