"""The size presets build at their real sizes (on the meta device: no memory) and are self-consistent."""

import pytest
import torch

from fashionchameleon import CausalWanTransformer3DModel, get_preset
from fashionchameleon.configs import PRESETS, Preset, StreamConfig, check_resolution
from fashionchameleon.vae import build_vae

EXPECTED_PARAMS = {"wan2.1-1.3b": (1.2e9, 1.6e9), "wan2.2-5b": (4.5e9, 5.5e9)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_and_shapes_agree(name):
    p = get_preset(name)
    check_resolution(p)
    with torch.device("meta"):
        m = CausalWanTransformer3DModel(**p.transformer)
        vae = build_vae(p.vae)
    n = sum(x.numel() for x in m.parameters())
    if name in EXPECTED_PARAMS:
        lo, hi = EXPECTED_PARAMS[name]
        assert lo < n < hi, f"{name}: {n / 1e9:.2f}B parameters"
    assert vae.z_dim == p.transformer["in_channels"]
    assert vae.spatial_factor == p.spatial_factor and vae.temporal_factor == p.temporal_factor
    h, w = p.latent_hw
    assert m.tokens_per_frame(h, w) == p.tokens_per_frame


def test_paper_token_counts():
    p = get_preset("wan2.2-5b")  # 1280x704 -> 80x44 latent -> 40x22 patches
    assert p.tokens_per_frame == 880 and p.stream.cache_frames == 23 and p.stream.chunk_frames == 3
    assert get_preset("wan2.1-1.3b").tokens_per_frame == 1560


def test_preset_roundtrip_and_bad_keys():
    p = get_preset("tiny")
    assert Preset.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown"):
        Preset.from_dict({**p.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown"):
        StreamConfig.from_dict({"chunk_frame": 3})
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("huge")
    bad = get_preset("tiny")
    bad.height = 150
    with pytest.raises(ValueError, match="multiple"):
        check_resolution(bad)
