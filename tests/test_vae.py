import json

import pytest
import torch
from diffusers import AutoencoderKLWan

from fashionchameleon.vae import FastVAE, WanVAE, build_vae, load_vae

Z16 = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
           latents_mean=[0.1 * i for i in range(16)], latents_std=[1.0 + 0.05 * i for i in range(16)])
# Wan2.2 layout (patch_size 2, residual up/down blocks, 16x spatial), shrunk
Z48 = dict(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
           temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12, out_channels=12,
           scale_factor_spatial=16, latents_mean=[0.01 * i for i in range(48)],
           latents_std=[1.0 + 0.01 * i for i in range(48)])
FAST = dict(z_dim=8, spatial_factor=8, temporal_factor=4, base_channels=8, latents_mean=0.5, latents_std=2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: one thread avoids OpenMP thrashing on a shared 2-core box
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _wan(cfg, seed=0):
    torch.manual_seed(seed)
    return WanVAE(AutoencoderKLWan(**cfg).eval())


@pytest.fixture(scope="module", params=["z16", "z48"])
def wan(request):
    return request.param, _wan(Z16 if request.param == "z16" else Z48)


def test_wan_properties(wan):
    name, v = wan
    assert v.z_dim == (16 if name == "z16" else 48)
    assert v.spatial_factor == (8 if name == "z16" else 16)
    assert v.temporal_factor == 4


def test_wan_encode_matches_diffusers(wan):
    _, v = wan
    s = v.spatial_factor
    x = torch.rand(1, 3, 5, 2 * s, 2 * s) * 2 - 1
    z = v.encode_video(x)
    assert z.shape == (1, v.z_dim, 2, 2, 2)
    with torch.no_grad():
        ref = v.vae.encode(x).latent_dist.mode()
    mean = torch.tensor(v.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(v.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(z, (ref - mean) / std, atol=1e-5, rtol=1e-5)
    zi = v.encode_image(x[:, :, 0])
    assert zi.shape == (1, v.z_dim, 1, 2, 2)
    torch.testing.assert_close(zi, z[:, :, :1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1 \\+ 4"):
        v.encode_video(x[:, :, :4])


@pytest.mark.parametrize("chunks", [[1, 2, 3], [3, 3]])
def test_wan_stream_decode_matches_one_shot(wan, chunks):
    _, v = wan
    torch.manual_seed(1)
    z = torch.randn(1, v.z_dim, sum(chunks), 2, 2)
    with torch.no_grad():
        ref = v.vae.decode(v.denormalize(z)).sample
    assert torch.allclose(v.decode(z), ref.clamp(-1, 1))
    dec = v.stream_decoder()
    for _ in range(2):  # second pass checks reset()
        dec.reset()
        outs, start = [], 0
        for n in chunks:
            o = dec.decode(z[:, :, start : start + n])
            assert o.shape[2] == (1 + 4 * (n - 1) if start == 0 else 4 * n)
            outs.append(o)
            start += n
        got = torch.cat(outs, dim=2)
        assert got.shape == ref.shape == (1, 3, 1 + 4 * (sum(chunks) - 1), 2 * v.spatial_factor, 2 * v.spatial_factor)
        assert (got - ref).abs().max().item() <= 1e-4


def test_wan_save_load_round_trip(tmp_path):
    v = _wan(Z16, seed=3)
    v.save_pretrained(tmp_path / "pipe" / "vae")
    assert list((tmp_path / "pipe" / "vae").glob("*.safetensors"))
    w = load_vae(tmp_path / "pipe")  # pipeline folder -> its vae/ subfolder
    assert isinstance(w, WanVAE)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    torch.testing.assert_close(w.encode_video(x), v.encode_video(x), atol=0, rtol=0)
    z = torch.randn(1, 16, 2, 2, 2)
    torch.testing.assert_close(w.decode(z), v.decode(z), atol=0, rtol=0)


def test_fast_shapes_and_frame_rule():
    torch.manual_seed(0)
    v = FastVAE(**FAST).eval()
    x = torch.rand(2, 3, 9, 32, 24) * 2 - 1
    z = v.encode_video(x)
    assert z.shape == (2, 8, 3, 4, 3)
    assert v.decode(z).shape == (2, 3, 9, 32, 24)
    assert v.encode_image(x[:, :, 0]).shape == (2, 8, 1, 4, 3)
    # causality: latent i depends only on its own frames
    x2 = x.clone()
    x2[:, :, 5:] = 0
    z2 = v.encode_video(x2)
    torch.testing.assert_close(z2[:, :, :2], z[:, :, :2])
    assert not torch.allclose(z2[:, :, 2], z[:, :, 2])
    x3 = x.clone()
    x3[:, :, 1:] = 0
    torch.testing.assert_close(v.encode_video(x3)[:, :, 0], z[:, :, 0])
    with pytest.raises(ValueError, match="1 \\+ 4"):
        v.encode_video(x[:, :, :8])
    # normalisation: raw = z * std + mean
    with torch.no_grad():
        raw = v.encode_raw(x)
    torch.testing.assert_close((raw - 0.5) / 2.0, z)


@pytest.mark.parametrize("context,shortcut,motion", [(0, True, False), (1, True, False), (2, True, False),
                                                     (1, False, False), (1, True, True), (2, True, True)])
@pytest.mark.parametrize("chunks", [[1, 2, 3], [3, 3], [2, 1, 1, 2]])
def test_fast_stream_decode_matches_one_shot(chunks, context, shortcut, motion):
    torch.manual_seed(0)
    v = FastVAE(**FAST, context_latents=context, shortcut=shortcut, shortcut_motion=motion).eval()
    for m in v.modules():  # re-init the zero-initialised residual convs so every block does something
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    z = torch.randn(1, 8, sum(chunks), 4, 4)
    ref = v.decode(z)
    dec = v.stream_decoder()
    outs, start = [], 0
    for n in chunks:
        outs.append(dec.decode(z[:, :, start : start + n]))
        start += n
    got = torch.cat(outs, dim=2)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-5
    if context:  # the decoder really uses the previous latent
        z2 = z.clone()
        z2[:, :, 1] += 1.0
        assert not torch.allclose(v.decode(z2)[:, :, 5:9], ref[:, :, 5:9])


def test_fast_motion_shortcut_moves_colour_across_a_group():
    """With the decoder's nets at zero, the held shortcut draws a latent's frames as one colour and steps at the
    next latent; the motion shortcut ramps linearly through the change, so consecutive frames differ equally."""
    with pytest.raises(ValueError, match="shortcut_motion"):
        FastVAE(**FAST, context_latents=0, shortcut_motion=True)
    z = torch.zeros(1, 8, 4, 2, 2)
    z[:, :3] = torch.tensor([0.0, 0.4, 0.8, 1.2]).view(1, 1, 4, 1, 1)  # colour rises by 0.4 per latent
    means = {}
    for motion in (False, True):
        v = FastVAE(**FAST, context_latents=1, shortcut_motion=motion).eval()
        for p in v.decoder.parameters():
            torch.nn.init.zeros_(p)
        with torch.no_grad():
            means[motion] = v.decode_raw(z)[0, 0].mean(dim=(1, 2))  # 1 + 4*3 frames
    held, moving = means[False].diff(), means[True].diff()
    torch.testing.assert_close(held[[0, 4, 8]], torch.full((3,), 0.4))  # one step per latent ...
    torch.testing.assert_close(held[[1, 2, 3, 5, 6, 7, 9, 10, 11]], torch.zeros(9))  # ... and still frames between
    torch.testing.assert_close(moving, torch.full((12,), 0.1))  # 0.4 per latent, spread over its 4 frames
    # monotonic: a latent that jumps and comes back is never overshot
    z[:, :3] = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 1, 4, 1, 1)
    with torch.no_grad():
        frames = v.decode_raw(z)[0, 0].mean(dim=(1, 2))
    assert frames.min() >= -1e-6 and frames.max() <= 1.0 + 1e-6


def test_fast_save_load_and_factories(tmp_path):
    v = build_vae({"backend": "fast", **FAST})
    assert isinstance(v, FastVAE) and v.z_dim == 8 and v.spatial_factor == 8 and v.temporal_factor == 4
    v.save_pretrained(tmp_path / "fast")
    cfg = json.loads((tmp_path / "fast" / "config.json").read_text())
    assert cfg["_class_name"] == "FastVAE"
    w = load_vae(tmp_path / "fast")
    assert isinstance(w, FastVAE)
    for a, b in zip(v.state_dict().values(), w.state_dict().values()):
        assert torch.equal(a, b)
    assert isinstance(build_vae({"backend": "wan", **Z16}), WanVAE)
    with pytest.raises(ValueError, match="backend"):
        build_vae({"backend": "nope"})


def test_bad_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_vae(tmp_path / "missing")
    d = tmp_path / "noweights"
    FastVAE(**FAST).save_pretrained(d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_vae(d)
    (d / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="noweights"):
        load_vae(d)
    (d / "config.json").write_text(json.dumps({"_class_name": "Mystery"}))
    (d / "w.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="Mystery"):
        load_vae(d)


@pytest.mark.parametrize("kind", ["fast", "wan"])
def test_frozen_vae_ignores_a_training_steps_autocast(kind):
    """The trainer autocasts whole steps; the frozen VAE's latents (the training targets) stay exact."""
    vae = build_vae({"backend": "fast", **FAST}) if kind == "fast" else _wan(Z16)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    z = vae.encode_video(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        za, xa = vae.encode_video(x), vae.decode(z)
    assert za.dtype == torch.float32 and torch.equal(za, z) and torch.equal(xa, vae.decode(z))
