"""HybridVAE: another VAE's encoder with a FastVAE decoder trained on its latents (teacher/train_vae.py
finetune.encoder), and the stage folders that stream with it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKLWan

from fashionchameleon.stream import StreamingEngine
from fashionchameleon.vae import FastVAE, HybridVAE, WanVAE, check_vae_dir, load_vae

ROOT = Path(__file__).resolve().parents[1]
# Wan2.2 layout (patch 2, residual blocks, 16x spatial), shrunk as in tests/test_vae.py
Z48 = dict(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
           temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12, out_channels=12,
           scale_factor_spatial=16, latents_mean=[0.01 * i for i in range(48)],
           latents_std=[1.0 + 0.01 * i for i in range(48)])
# a random encoder's raw latents have std ~0.1: stats of that scale give unit normalised latents, as real ones do
Z16 = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
           latents_mean=[-0.04] * 16, latents_std=[0.1 + 0.002 * i for i in range(16)])


def _wan(cfg, seed=0) -> WanVAE:
    torch.manual_seed(seed)
    return WanVAE(AutoencoderKLWan(**cfg).eval())


def _decoder_for(enc, seed=1, **kw) -> FastVAE:
    torch.manual_seed(seed)
    cfg = dict(z_dim=enc.z_dim, spatial_factor=enc.spatial_factor, temporal_factor=enc.temporal_factor,
               base_channels=8, shortcut=False, context_latents=1)
    return FastVAE(**{**cfg, **kw}).eval()


def _video(frames=9, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def test_encodes_with_the_encoder_and_decodes_with_the_decoder(tmp_path):
    wan = _wan(Z48)
    dec = _decoder_for(wan)
    hv = HybridVAE(wan, dec)
    assert (hv.z_dim, hv.spatial_factor, hv.temporal_factor) == (48, 16, 4)
    x = _video()
    z = hv.encode_video(x)
    torch.testing.assert_close(z, wan.encode_video(x), rtol=0, atol=0)
    torch.testing.assert_close(hv.encode_image(x[:, :, 0]), wan.encode_image(x[:, :, 0]), rtol=0, atol=0)
    torch.testing.assert_close(hv.decode(z), dec.decode(z), rtol=0, atol=0)
    # the streaming decode is the decoder's: chunked == one shot
    s = hv.stream_decoder()
    chunked = torch.cat([s.decode(z[:, :, :1]), s.decode(z[:, :, 1:])], dim=2)
    torch.testing.assert_close(chunked, hv.decode(z), rtol=1e-5, atol=1e-5)

    hv.save_pretrained(tmp_path / "vae")
    cfg = json.loads((tmp_path / "vae/config.json").read_text())
    assert cfg["_class_name"] == "HybridVAE" and check_vae_dir(tmp_path / "vae") == tmp_path / "vae"
    back = load_vae(tmp_path / "vae")
    assert isinstance(back, HybridVAE) and isinstance(back.encoder, WanVAE)
    torch.testing.assert_close(back.encode_video(x), z, rtol=0, atol=0)
    torch.testing.assert_close(back.decode(z), hv.decode(z), rtol=0, atol=0)


def test_a_decoder_that_cannot_read_the_latents_is_refused(tmp_path):
    wan = _wan(Z16)
    with pytest.raises(ValueError, match="latent layout"):
        HybridVAE(wan, _decoder_for(wan, z_dim=8))
    with pytest.raises(ValueError, match="shortcut=False"):
        HybridVAE(wan, _decoder_for(wan, shortcut=True))
    with pytest.raises(ValueError, match="normalised"):
        HybridVAE(wan, _decoder_for(wan, latents_std=2.0))
    with pytest.raises(TypeError, match="FastVAE"):
        HybridVAE(wan, wan)
    HybridVAE(wan, _decoder_for(wan)).save_pretrained(tmp_path / "vae")
    shutil.rmtree(tmp_path / "vae/decoder")
    with pytest.raises(FileNotFoundError, match="decoder"):
        load_vae(tmp_path / "vae")


def _frames(engine, swap_at=None, frames=30):
    rng = np.random.default_rng(0)
    ref, g1, g2 = [rng.integers(0, 256, (engine.height, engine.width, 3), dtype=np.uint8) for _ in range(3)]
    s = engine.new_session("disentangle")
    out = []
    for fr in s.start(ref, g1, "walks forward", seed=5, garment_id="g1", max_frames=frames):
        out.append(fr.image)
        if fr.index == swap_at:
            s.request_swap(g2, "g2")
    return out


def test_a_stage_streams_with_a_hybrid_vae_and_make_stage_checks_the_latent_space(tmp_path):
    base = StreamingEngine.from_preset("test", seed=0)
    stage = base.save(tmp_path / "stage")
    hybrid = HybridVAE(load_vae(stage / "vae"), _decoder_for(base.vae))
    hybrid.save_pretrained(tmp_path / "fastdec")
    r = subprocess.run([sys.executable, "-m", "distill.make_stage", "--like", str(stage), "--out",
                        str(tmp_path / "fast"), "--vae", str(tmp_path / "fastdec")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    eng = StreamingEngine.from_checkpoint(tmp_path / "fast")
    assert isinstance(eng.vae, HybridVAE)
    a, b = _frames(eng, swap_at=12), _frames(eng, swap_at=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # deterministic through the swap's re-encode
    plain = _frames(base, swap_at=12)
    assert not np.array_equal(a[0], plain[0])  # the frames are the new decoder's
    # a decoder trained for another encoder is refused before anything is written
    other = HybridVAE(FastVAE(z_dim=16, spatial_factor=8, temporal_factor=4, base_channels=8), _decoder_for(base.vae))
    other.save_pretrained(tmp_path / "other")
    r = subprocess.run([sys.executable, "-m", "distill.make_stage", "--like", str(stage), "--out",
                        str(tmp_path / "bad"), "--vae", str(tmp_path / "other")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "does not encode like" in r.stderr and not (tmp_path / "bad").exists()


def _vae_config(tmp_path, encoder, **train):
    cfg = yaml.safe_load((ROOT / "teacher/configs/vae_smoke.yaml").read_text())
    cfg["train"].update(output_dir=str(tmp_path / "run"), **train)
    cfg["model"] = {"base_channels": 8, "num_res_blocks": 1}
    cfg["finetune"] = {"encoder": str(encoder), "eval_noise": 0.0}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def _train_vae(tmp_path, *extra):
    return subprocess.run([sys.executable, "-m", "teacher.train_vae", "--config", str(tmp_path / "cfg.yaml"), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_train_vae_distils_a_decoder_that_learns_the_latent_space(tmp_path):
    # the demo VAE's trained latent space; the decoder has no colour shortcut, so it must read every channel
    enc_dir = ROOT / "assets/checkpoints/vae_tiny_dec"
    cfg = _vae_config(tmp_path, enc_dir, max_steps=300, eval_every=300, save_every=300, lr=2e-3, num_threads=1)
    cfg["data"].update(height=64, width=64, train_length=64)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = _train_vae(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "run/eval.json").read_text())
    final = load_vae(tmp_path / "run/final")
    assert isinstance(final, HybridVAE) and report["model"]["encoder"] == "FastVAE"
    enc = load_vae(enc_dir)
    sd, ref = final.encoder.state_dict(), enc.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)  # the given encoder, untouched
    # held-out PSNR, measured the same way, against the same decoder untrained
    from teacher.train_vae import DataConfig, clip_datasets, evaluate_psnr

    _, val = clip_datasets(DataConfig(**cfg["data"]), 2, cfg["data"]["val_length"])
    clips = [val[i]["video"] for i in range(len(val))]
    torch.manual_seed(0)
    untrained = HybridVAE(enc, FastVAE(**{k: v for k, v in final.decoder.config.items() if not k.startswith("_")}))
    before = evaluate_psnr(untrained, clips, 2)
    assert report["val_psnr"] == pytest.approx(evaluate_psnr(final, clips, 2), abs=1e-4)
    assert report["val_psnr"] > before + 3.0, (before, report["val_psnr"])


def test_train_vae_takes_a_wan_encoder_and_refuses_a_contradicting_model_section(tmp_path):
    _wan(Z16).save_pretrained(tmp_path / "wan_vae")
    _vae_config(tmp_path, tmp_path / "wan_vae")
    r = _train_vae(tmp_path, "--smoke")
    assert r.returncode == 0, r.stderr[-3000:]
    final = load_vae(tmp_path / "run/final")
    assert isinstance(final, HybridVAE) and isinstance(final.encoder, WanVAE) and final.decoder.z_dim == 16
    cfg = _vae_config(tmp_path, tmp_path / "wan_vae")
    cfg["model"]["z_dim"] = 8  # the encoder's latents have 16 channels
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = _train_vae(tmp_path, "--smoke")
    assert r.returncode != 0 and "z_dim=8 vs 16" in r.stderr


def test_vae_folder_source_holds_rows_out(tmp_path):
    from fashionchameleon.data.synth import main as synth
    from teacher.train_vae import DataConfig, clip_datasets

    synth(["--out", str(tmp_path / "d"), "--clips", "3", "--seed", "1", "--size", "32x32", "--frames", "5"])
    data = DataConfig(source="folder", root=str(tmp_path / "d"), height=32, width=32, frames=5)
    train, val = clip_datasets(data, 99, 1)
    assert (len(train), len(val)) == (2, 1) and val[0]["video"].shape == (3, 5, 32, 32)
    assert float(val[0]["video"].min()) >= -1 and float(val[0]["video"].max()) <= 1
    with pytest.raises(ValueError, match="too few"):
        clip_datasets(data, 99, 3)
    with pytest.raises(ValueError, match="data.root"):
        DataConfig(source="folder")
