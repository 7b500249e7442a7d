"""Stage folders from trainer checkpoints, and copies with other streaming settings.

    # the EMA weights of a checkpoint step, with the preset / VAE / text encoder of stage folder --like
    python -m distill.make_stage --weights runs/tf_v28_ctx/step_000300/ema_student_rank0.safetensors \
        --like runs/tf_v28/final --out runs/tf_v28_ctx/s300 [--stream context_noise=300]
    # a stage folder with streaming settings changed (the weights are copied as they are)
    python -m distill.make_stage --like runs/tf_v28_ctx/s300 --out /tmp/s300_ctx200 --stream context_noise=200
    # the same stage with a distilled fast decoder (a HybridVAE whose encoder is the stage's VAE; teacher/train_vae.py
    # finetune.encoder): the latent space is unchanged, the per-chunk decode is the FastVAE's
    python -m distill.make_stage --like runs/dmd_wan22/final --out runs/dmd_wan22/fastdec --vae runs/fastdec/final
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

import torch
import yaml

from fashionchameleon.configs import Preset
from fashionchameleon.stream import PRESET_FILE
from fashionchameleon.vae import HybridVAE, load_vae
from teacher.common import stage_from_trainer_export


def parse_stream(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--stream expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def check_same_latent_space(stage_vae: Path, new_vae: Path) -> None:
    """Raise unless `new_vae` encodes exactly as `stage_vae` (weights equal up to fp16 storage): the stage's DiT
    was trained in that latent space, so only the decoder may change."""
    def encoder_of(v):
        return v.encoder if isinstance(v, HybridVAE) else v

    a, b = encoder_of(load_vae(stage_vae)), encoder_of(load_vae(new_vae))
    sa, sb = a.state_dict(), b.state_dict()
    same = type(a) is type(b) and sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.allclose(sa[k].float(), sb[k].float(), rtol=1e-3, atol=1e-5) for k in sa)
    if not same:
        raise ValueError(f"--vae {new_vae} does not encode like the stage's VAE {stage_vae}: train its decoder with "
                         f"teacher/train_vae.py finetune.encoder: {stage_vae}")


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="trainer export: a safetensors file or a step_*/<model>_ema folder")
    ap.add_argument("--like", required=True, help="stage folder giving preset, VAE and architecture")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stream", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--half", action="store_true", help="store the --weights in fp16 (the loaders cast back to fp32)")
    ap.add_argument("--vae", help="VAE folder for the stage's vae/: a HybridVAE whose encoder is the stage's VAE")
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
    if a.vae:
        try:
            check_same_latent_space(like / "vae", Path(a.vae))
        except (OSError, ValueError) as e:
            ap.error(str(e))
    if a.weights:
        if not Path(a.weights).exists():
            ap.error(f"--weights {a.weights} not found")
        stage_from_trainer_export(a.weights, like, out, half=a.half)
    else:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(like, out)
    (out / PRESET_FILE).write_text(json.dumps(preset.to_dict(), indent=2))
    if a.vae:
        shutil.rmtree(out / "vae")
        shutil.copytree(a.vae, out / "vae")
    print(f"wrote {out} (stream: {json.dumps(preset.to_dict()['stream'])})")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
