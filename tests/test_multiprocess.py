"""Every training stage under a 2-process DDP launch (gloo on CPU, loopback rendezvous): the same entry points and
configs a multi-GPU `accelerate launch` runs. Each rank trains on different batches, so identical per-rank EMA
shadows after the run mean the gradients were all-reduced (a step function that calls the transformer past the
DDP wrapper leaves the DMD generator's ranks apart)."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from ddp_helpers import NPROC, ROOT, launch, max_diff, rank_emas


def variant(src: str, dest: Path, **model) -> str:
    """A smoke config with model-section overrides (things the command line does not set)."""
    cfg = yaml.safe_load((ROOT / src).read_text())
    cfg["model"].update(model)
    dest.write_text(yaml.safe_dump(cfg))
    return str(dest)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    launch("teacher.train_vae", "--config", "teacher/configs/vae_smoke.yaml", "--smoke", "--out", str(d / "vae"))
    # gradient checkpointing as in the wan2.2-5b configs (non-reentrant checkpointing under DDP)
    launch("teacher.train_teacher", "--config",
           variant("teacher/configs/smoke.yaml", d / "teacher.yaml", gradient_checkpointing=True),
           "--smoke", "--out", str(d / "teacher"))
    # a trainable text encoder: its parameters must join the DDP reduction too
    launch("distill.train_tf", "--config",
           variant("distill/configs/tf_smoke.yaml", d / "tf.yaml", train_text_encoder=True),
           "--smoke", "--init", str(d / "teacher" / "final"), "--out", str(d / "tf"))
    launch("distill.train_dmd", "--config", "distill/configs/dmd_smoke.yaml", "--smoke",
           "--init", str(d / "tf" / "final"), "--teacher", str(d / "teacher" / "final"), "--out", str(d / "dmd"))
    return d


@pytest.mark.parametrize("stage,name", [("vae", "vae"), ("teacher", "teacher"), ("tf", "student"),
                                        ("dmd", "generator")])
def test_ranks_stay_in_sync(chain, stage, name):
    steps = sorted((chain / stage).glob("step_*"))
    assert steps, f"no checkpoint from the {stage} run"
    assert max_diff(*rank_emas(steps[-1], name)) == 0.0, f"{stage}: ranks diverged (gradients not all-reduced)"
    # ...and not because nothing moved: real (nonzero) updates were applied
    rows = list(csv.DictReader((chain / stage / "log.csv").open()))
    norms = [float(r["grad_norm"]) for r in rows if r["grad_norm"] not in ("", "nan")]
    assert norms and all(n > 0 for n in norms) and all(float(r["lr"]) > 0 for r in rows)
    if stage != "vae":  # (the VAE stage writes its own report, eval.json)
        ran = json.loads((chain / stage / "result.json").read_text())
        assert (ran["distributed_type"], ran["num_processes"]) == ("MULTI_CPU", NPROC)


def test_vae_exports_the_ema_weights(chain):
    from fashionchameleon.vae import load_vae

    last = sorted((chain / "vae").glob("step_*"))[-1]
    ema = rank_emas(last, "vae")[0]
    final = load_vae(chain / "vae" / "final").state_dict()
    assert max(float((ema[k] - final[k]).abs().max()) for k in ema) == 0.0
    assert json.loads((chain / "vae" / "eval.json").read_text())["val_psnr"] > 0


def test_stage_folders_load_and_stream(chain):
    from fashionchameleon.stream import StreamingEngine
    from teacher.common import load_stage

    for stage in ("teacher", "tf"):
        load_stage(chain / stage / "final")
    eng = StreamingEngine.from_checkpoint(chain / "dmd" / "final")
    frames = list(eng.new_session().start(np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8),
                                          "walks forward", max_frames=5))
    assert [f.index for f in frames] == list(range(5)) and frames[0].image.shape == (32, 32, 3)


def test_resume_under_ddp_is_exact(chain, tmp_path):
    cfg = "teacher/configs/smoke.yaml"
    launch("teacher.train_teacher", "--config", cfg, "--smoke", "--out", str(tmp_path / "full"))
    launch("teacher.train_teacher", "--config", cfg, "--smoke", "--out", str(tmp_path / "split"), "--until", "2")
    launch("teacher.train_teacher", "--config", cfg, "--smoke", "--out", str(tmp_path / "split"), "--resume")
    full, split = (rank_emas(tmp_path / run / "step_000004", "teacher") for run in ("full", "split"))
    for r in range(NPROC):
        assert max_diff(full[r], split[r]) == 0.0


@pytest.mark.parametrize("stage,name", [("teacher", "teacher"), ("tf", "student"), ("dmd", "generator")])
def test_exports_hold_the_ema_weights(chain, stage, name):
    """The stage folders are written by the collective export (every rank joins, rank 0 writes) and hold the
    EMA weights of the final step, bit for bit."""
    last = sorted((chain / stage).glob("step_*"))[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    result = json.loads((chain / stage / "result.json").read_text())
    assert state["step"] == result["step"]
    ema = rank_emas(last, name)[0]
    exported = {f"transformer.{k}": v for k, v in
                load_file(str(chain / stage / "final" / "transformer" / "diffusion_pytorch_model.safetensors")).items()}
    te = chain / stage / "final" / "text_encoder" / "diffusion_pytorch_model.safetensors"
    if any(k.startswith("text_encoder.") for k in ema):
        exported.update({f"text_encoder.{k}": v for k, v in load_file(str(te)).items()})
    assert ema.keys() <= exported.keys()
    assert max(float((ema[k] - exported[k].float()).abs().max()) for k in ema) == 0.0


def test_dmd_critic_export(chain):
    """`final_critic/` (collective export, no EMA) is the critic of the last step, loadable as `dmd.critic_init`."""
    sys.path.insert(0, str(ROOT))
    from distill.train_dmd import load_critic

    last = sorted((chain / "dmd").glob("step_*"))[-1]
    ckpt = {k.removeprefix("transformer."): v for k, v in load_file(str(last / "critic" / "model.safetensors")).items()}
    critic = load_critic(chain / "dmd" / "final_critic").state_dict()
    assert ckpt.keys() == critic.keys()
    assert max(float((ckpt[k] - critic[k]).abs().max()) for k in ckpt) == 0.0
