import csv
import json

import pytest
import torch
from torch.utils.data import TensorDataset

from fashionchameleon.trainer import TrainConfig, Trainer, dataclass_from_dict, latest_checkpoint, load_yaml_config
from fashionchameleon.vae import FastVAE, load_vae


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: one thread avoids OpenMP thrashing on a shared 2-core box
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 5, 16, 16, generator=g).tanh())


def _step(ctx, batch):
    (x,) = batch
    x = x + 0.05 * torch.randn_like(x)  # exercises the per-step RNG
    recon, _ = ctx.models["vae"](x)
    return {"loss": (recon - x).abs().mean(), "mse": (recon - x).pow(2).mean().detach()}


def _trainer(out, max_steps, step=_step, **train):
    torch.manual_seed(0)
    vae = FastVAE(z_dim=4, spatial_factor=8, temporal_factor=4, base_channels=4)
    cfg = TrainConfig(output_dir=str(out), max_steps=max_steps, batch_size=4, lr=3e-3, warmup_steps=2,
                      lr_schedule="cosine", grad_clip=0.5, ema_models=["vae"], ema_decay=0.9, ema_start_step=2,
                      save_every=3, log_every=1, keep_checkpoints=10, **train)
    return Trainer(cfg, {"vae": vae}, step, _data())


def _weights(tr):
    m = tr.accelerator.unwrap_model(tr.models["vae"])
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_resume_is_exact(tmp_path):
    # 24 samples / batch 4 = 6 batches per epoch: 9 steps cross an epoch boundary after resuming mid-epoch
    a = _trainer(tmp_path / "a", 9)
    a.train()
    b = _trainer(tmp_path / "b", 9)
    b.train(until=3)
    b2 = _trainer(tmp_path / "b", 9)
    res = b2.train(resume=True)
    assert res["step"] == 9 and b2.samples_seen == a.samples_seen == 36
    wa, wb = _weights(a), _weights(b2)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(x, y) for x, y in zip(a.ema["vae"].shadow, b2.ema["vae"].shadow))
    sa = a.optimizers["vae"].state_dict()["state"]
    sb = b2.optimizers["vae"].state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)

    ck = latest_checkpoint(tmp_path / "b")
    assert ck.name == "step_000009"
    assert (ck / "model.safetensors").is_file()  # accelerate state writes safetensors weights
    assert not list(ck.glob("*.bin")) or all("model" not in f.name for f in ck.glob("*.bin"))
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 9
    ema = load_vae(ck / "vae_ema")
    assert isinstance(ema, FastVAE)
    assert all(torch.equal(p, s) for p, s in zip(ema.parameters(), a.ema["vae"].shadow))
    plain = load_vae(ck / "vae")
    assert all(torch.equal(plain.state_dict()[k], wa[k]) for k in wa)

    rows = list(csv.DictReader((tmp_path / "b" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert {"loss", "lr", "grad_norm", "samples_seen", "elapsed_s", "mse"} <= set(rows[0])


def test_data_echo_reuses_each_batch_and_resumes_exactly(tmp_path):
    """data_echo=2: every loaded batch feeds two consecutive steps (with fresh step noise), and a resume that lands
    between the two echoes of a batch continues exactly, across the epoch boundary (6 batches per epoch)."""
    seen: list[float] = []

    def recording(ctx, batch):
        seen.append(float(batch[0].sum()))
        return _step(ctx, batch)

    a = _trainer(tmp_path / "a", 15, recording, data_echo=2)
    a.train()
    assert len(seen) == 15 and seen[0::2][:7] == seen[1::2][:7] and len(set(seen)) == 8
    assert a.samples_seen == 60
    b = _trainer(tmp_path / "b", 15, data_echo=2)
    b.train(until=3)  # micro-batch 3 is the second echo of loaded batch 1
    b2 = _trainer(tmp_path / "b", 15, data_echo=2)
    b2.train(resume=True)
    wa, wb = _weights(a), _weights(b2)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    plain = _trainer(tmp_path / "c", 15)
    plain.train()
    assert not all(torch.equal(wa[k], w) for k, w in _weights(plain).items())
    with pytest.raises(ValueError, match="data_echo must be >= 1"):
        TrainConfig(data_echo=0)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        dataclass_from_dict(TrainConfig, {"lr": 1e-3, "lrr": 2})
    with pytest.raises(TypeError, match="max_steps"):
        dataclass_from_dict(TrainConfig, {"max_steps": "ten"})
    with pytest.raises(ValueError, match="lr_schedule"):
        dataclass_from_dict(TrainConfig, {"lr_schedule": "linear"})
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  max_steps: 5\n  lr: 1\nmodel: {}\n")
    cfg = load_yaml_config(p, {"train": TrainConfig, "model": dict})
    assert cfg["train"].max_steps == 5 and cfg["train"].lr == 1.0
    with pytest.raises(ValueError, match="unknown section"):
        load_yaml_config(p, {"train": TrainConfig})
    with pytest.raises(FileNotFoundError):
        load_yaml_config(tmp_path / "nope.yaml", {"train": TrainConfig})


def test_train_vae_smoke(tmp_path):
    from teacher.train_vae import main

    report = main(["--config", "teacher/configs/vae_smoke.yaml", "--smoke", "--out", str(tmp_path / "run")])
    assert report["step"] == 6 and report["val_psnr"] > 0
    vae = load_vae(tmp_path / "run" / "final")
    assert isinstance(vae, FastVAE) and len(vae.config.latents_mean) == vae.z_dim
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["step"] == 6
    assert load_vae(tmp_path / "run" / "best").z_dim == vae.z_dim


def test_vae_decoder_finetune_keeps_latent_space(tmp_path):
    """Decoder-only fine-tune: the encoder and the latent mean/std of the init VAE survive bit for bit (the
    DiTs trained in that latent space stay valid); the decoder moves; noisy-latent PSNR is reported."""
    import yaml
    from safetensors.torch import load_file

    from teacher.train_vae import main

    base = tmp_path / "base"
    main(["--config", "teacher/configs/vae_smoke.yaml", "--smoke", "--out", str(base)])
    cfg = yaml.safe_load(open("teacher/configs/vae_smoke.yaml"))
    cfg["finetune"] = {"init": str(base / "final"), "freeze_encoder": True, "latent_noise": 0.5, "eval_noise": 0.2,
                       "overrides": {"shortcut_motion": True}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    report = main(["--config", str(tmp_path / "ft.yaml"), "--smoke", "--out", str(tmp_path / "ft")])
    assert report["step"] == 6 and report["val_psnr_noise0.2"] < report["val_psnr"]
    a = json.loads((base / "final" / "config.json").read_text())
    b = json.loads((tmp_path / "ft" / "final" / "config.json").read_text())
    assert a["latents_mean"] == b["latents_mean"] and a["latents_std"] == b["latents_std"]
    assert b["shortcut_motion"] is True and a.get("shortcut_motion", False) is False
    wa = load_file(str(base / "final" / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(tmp_path / "ft" / "final" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.startswith("encoder."))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa if k.startswith("decoder."))
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    torch.testing.assert_close(load_vae(base / "final").encode_video(x), load_vae(tmp_path / "ft" / "final").encode_video(x))


def test_vae_finetune_config_errors():
    from teacher.train_vae import FinetuneConfig

    with pytest.raises(ValueError, match="needs finetune.init"):
        FinetuneConfig(freeze_encoder=True)
    with pytest.raises(ValueError, match=">= 0"):
        FinetuneConfig(latent_noise=-1)


def test_vae_forward_noise_scale_is_per_clip_in_normalised_units():
    torch.manual_seed(0)
    vae = FastVAE(z_dim=16, base_channels=8, num_res_blocks=1, latents_std=0.5).eval()
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    clean, z = vae(x)
    same, z2 = vae(x, torch.zeros(2))
    torch.testing.assert_close(same, clean)
    torch.testing.assert_close(z2, z)
    noisy, _ = vae(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(noisy[0], clean[0])
    assert (noisy[1] - clean[1]).abs().mean() > 1e-3


def test_max_minutes_stops_with_a_checkpoint_and_resumes(tmp_path, monkeypatch):
    import fashionchameleon.trainer as trainer_mod

    # a fake clock that advances one "minute" per call: the deadline passes after the 3rd step
    clock = iter(range(0, 10_000, 60))
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: float(next(clock)))
    tr = _trainer(tmp_path / "t", 50)
    tr.config.max_minutes = 4.0
    tr.config.log_every = 7
    res = tr.train()
    assert 1 <= res["step"] < 50
    ckpt = latest_checkpoint(tmp_path / "t")
    assert ckpt is not None and ckpt.name.endswith(f"{res['step']:06d}")
    rows = list(csv.DictReader((tmp_path / "t" / "log.csv").open()))
    assert int(rows[-1]["step"]) == res["step"]  # the stop step is logged even off the log grid
    assert float(rows[-1]["data_s"]) >= 0.0  # time blocked on the loader is logged with every row
    monkeypatch.undo()
    more = _trainer(tmp_path / "t", res["step"] + 2)
    assert more.train(resume=True)["step"] == res["step"] + 2


def test_max_minutes_must_not_be_negative():
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=-1.0)


def test_latent_step_ratio_and_temporal_loss_see_held_then_jumping_frames():
    """A bar moving 1 px every frame scores ~1; the same motion drawn as one still image per latent group
    (held for `tf` frames, then a jump) scores >> 1, and the temporal loss sees the difference that pixel losses
    barely weigh."""
    from teacher.train_vae import latent_step_ratio, temporal_l1

    tf, t, w = 4, 13, 32
    smooth = -torch.ones(1, 3, t, 8, w)
    held = -torch.ones(1, 3, t, 8, w)
    for i in range(t):
        smooth[:, :, i, :, i: i + 4] = 1.0
        j = 0 if i == 0 else 1 + tf * ((i - 1) // tf) + tf - 1  # each group shows its last frame
        held[:, :, i, :, j: j + 4] = 1.0
    assert latent_step_ratio(smooth, tf) == pytest.approx(1.0)
    assert latent_step_ratio(held, tf) > 10
    assert temporal_l1(smooth, smooth) == 0
    assert temporal_l1(held, smooth) > 0
    assert temporal_l1(smooth[:, :, :1], held[:, :, :1]) == 0


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process; this test needs bf16 beside the suite's fp32."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_reaches_routed_and_frozen_models(tmp_path, fresh_accelerate_state):
    """With mixed_precision bf16 (CPU autocast here), the routed transformer of a prepared model and a frozen model
    the step calls directly both compute in bf16, the frozen one is stored in bf16, the trained weights stay fp32
    and get gradients. (Routed calls in one process used to bypass accelerate's autocast: fp32 throughout.)"""
    import copy

    from teacher.common import ModelConfig, build_components, routed, wrap

    comp = build_components(ModelConfig(preset="test"))
    frozen = copy.deepcopy(comp.transformer).requires_grad_(False).eval()
    seen: dict[str, torch.dtype] = {}
    for name, m in (("trained", comp.transformer), ("frozen", frozen)):
        m.proj_out.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, out.dtype))
    z, (h, w) = comp.transformer.config.in_channels, comp.preset.latent_hw

    def step(ctx, batch):
        (x,) = batch
        model = routed(ctx, "model")
        text = model.encode(["walks forward"] * x.shape[0])
        t = torch.full((x.shape[0], x.shape[2]), 500.0)
        with torch.no_grad():
            target = ctx.models["frozen"](x, t, text, attention_mode="bidirectional").sample
        out = model.transformer(x, t, text, attention_mode="bidirectional").sample
        return {"loss": (out.float() - target.float()).pow(2).mean()}

    data = TensorDataset(torch.randn(4, z, 2, h, w))
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=1, batch_size=2, mixed_precision="bf16", save_every=1)
    tr = Trainer(cfg, {"model": wrap(comp), "frozen": frozen}, step, data)
    tr.train()
    assert seen == {"trained": torch.bfloat16, "frozen": torch.bfloat16}
    assert next(tr.models["frozen"].parameters()).dtype == torch.bfloat16  # frozen_dtype "auto"
    assert all(p.dtype == torch.float32 for p in tr.models["model"].parameters())
    assert json.loads((tmp_path / "step_000001" / "trainer_state.json").read_text())["step"] == 1


def test_log_keeps_scalars_that_first_appear_after_the_header(tmp_path):
    """A DMD run logs only the critic during its warm-up; the generator's scalars that start later must reach log.csv."""
    def step(ctx, batch):
        out = _step(ctx, batch)
        if ctx.step >= 3:  # the trainer's step counter before this update
            out["late"] = torch.tensor(float(ctx.step))
        return out

    tr = _trainer(tmp_path / "l", 6, step=step)
    tr.train()
    rows = list(csv.DictReader((tmp_path / "l" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [r["late"] for r in rows[:3]] == ["", "", ""]
    assert [float(r["late"]) for r in rows[3:]] == [3.0, 4.0, 5.0]
    assert all(r["mse"] for r in rows)  # the old columns keep their values
