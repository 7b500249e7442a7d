"""Every shipped stage config parses with its entry point's sections (no unknown or mistyped keys), so a config
that fell behind the code fails here rather than minutes into a run or a GPU lease."""

from pathlib import Path

import pytest

from distill import train_dmd, train_tf
from fashionchameleon.trainer import load_yaml_config
from teacher import train_teacher, train_vae

ROOT = Path(__file__).resolve().parents[1]


def entry_sections(path: Path) -> dict:
    name = path.name
    if path.parent.name == "configs" and path.parent.parent.name == "distill":
        return train_tf.SECTIONS if name.startswith("tf_") else train_dmd.SECTIONS
    return train_vae.SECTIONS if name.startswith("vae_") else train_teacher.SECTIONS


CONFIGS = sorted([*(ROOT / "teacher/configs").rglob("*.yaml"), *(ROOT / "distill/configs").glob("*.yaml")])


def test_every_stage_family_has_configs():
    names = {p.name for p in CONFIGS}
    assert {"smoke.yaml", "tiny.yaml", "wan2.2-5b.yaml", "tf_smoke.yaml", "dmd_smoke.yaml", "vae_smoke.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_parses_with_its_entry_point(path):
    cfg = load_yaml_config(path, entry_sections(path))
    assert cfg["train"].batch_size >= 1
