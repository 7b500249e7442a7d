"""Stage 1 (in-context teacher): smoke run, resume, sampling, config checks. CPU, `test` preset, seconds each."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from fashionchameleon.stream import StreamingEngine
from fashionchameleon.trainer import load_yaml_config
from teacher import train_teacher
from teacher.common import (DataConfig, ModelConfig, build_components, build_dataset, incontext_flow, load_stage,
                            per_frame_bell_mse)
from teacher.sample import render_examples, teacher_generate, write_mp4

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "teacher/configs/smoke.yaml")


def _weights(path):
    return load_stage(path).transformer.state_dict()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    res = train_teacher.main(["--config", SMOKE, "--smoke", "--out", str(out)])
    return out, res


def test_smoke_writes_loadable_stage_folder(teacher_run):
    out, res = teacher_run
    assert res["step"] == 4 and np.isfinite(res["loss"])
    comp = load_stage(out / "final")
    assert comp.preset.name == "test"
    # the shipped-engine loader reads the same folder
    eng = StreamingEngine.from_checkpoint(out / "final")
    assert eng.height == comp.preset.height
    assert (out / "final" / "README.md").is_file() and (out / "loss.png").is_file()
    assert (out / "samples").is_dir() and list((out / "samples").glob("*.png"))
    # the exported weights are the EMA shadow of the trained model, not the initial weights
    init = build_components(ModelConfig(preset="test")).transformer.state_dict()
    trained = comp.transformer.state_dict()
    assert any(not torch.equal(init[k], trained[k]) for k in init)


def test_resume_continues_exactly(tmp_path, teacher_run):
    ref_out, _ = teacher_run
    args = ["--config", SMOKE, "--smoke", "--out", str(tmp_path)]
    train_teacher.main(args + ["--until", "2"])
    res = train_teacher.main(args + ["--resume"])
    assert res["step"] == 4
    a, b = _weights(ref_out / "final"), _weights(tmp_path / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bell_weighted_loss_only_sees_video_frames():
    comp = build_components(ModelConfig(preset="test"))
    fm = comp.fm
    g = torch.Generator().manual_seed(0)
    z = comp.transformer.config.in_channels
    ref = torch.randn(2, z, 1, 4, 4, generator=g, requires_grad=True)
    gar = torch.randn(2, z, 1, 4, 4, generator=g)
    vid = torch.randn(2, z, 3, 4, 4, generator=g)
    t = torch.tensor([100.0, 700.0])
    text = comp.text_encoder(["walks forward", ""])
    v = incontext_flow(comp.transformer, ref, gar, vid, t, text)
    assert v.shape == vid.shape  # condition outputs dropped
    target = torch.randn_like(vid)
    loss = per_frame_bell_mse(fm, v, target, t)
    manual = (fm.bell_weight(t)[:, None] * (v - target).pow(2).mean(dim=(1, 3, 4))).mean()
    assert torch.allclose(loss, manual)
    loss.backward()
    assert ref.grad.abs().sum() > 0  # the video attends to the reference (bidirectional in-context)


def test_sampler_writes_mp4_and_sheet(tmp_path, teacher_run):
    out, _ = teacher_run
    comp = load_stage(out / "final")
    ds = build_dataset(DataConfig(frames=5), comp.preset, "test", 1, 0)
    res = render_examples(comp, [ds[0]], tmp_path, frames=5, steps=2, guidance=3.0, seed=0)
    assert Path(res["sheet"]).is_file()
    with av.open(res["videos"][0]) as box:
        st = box.streams.video[0]
        frames = [f for f in box.decode(st)]
        assert st.codec_context.name == "h264" and st.codec_context.pix_fmt == "yuv420p"
    assert len(frames) == 5
    # guidance 1 == the conditional branch only; same seed -> same clip
    a = teacher_generate(comp, ds[0]["reference"][None], ds[0]["garment"][None], ["walks forward"], 5, 2, 1.0)
    b = teacher_generate(comp, ds[0]["reference"][None], ds[0]["garment"][None], ["walks forward"], 5, 2, 1.0)
    assert a.shape == (1, 3, 5, comp.preset.height, comp.preset.width) and torch.equal(a, b)


def test_garment_guidance_in_the_teacher_sampler(teacher_run):
    """`teacher.sample --garment-guidance` (run 8): with the blank garment equal to the real one the garment term
    vanishes (== text CFG); against the white canvas it changes the clip; 1 is the plain sampler; a bad value is
    refused."""
    from teacher.common import cfg_flow, garment_guided_flow

    out, _ = teacher_run
    comp = load_stage(out / "final")
    ds = build_dataset(DataConfig(frames=5), comp.preset, "test", 1, 0)
    ref, gar = ds[0]["reference"][None], ds[0]["garment"][None]
    tr, vae = comp.transformer.eval(), comp.vae
    with torch.no_grad():
        r, g = vae.encode_image(ref), vae.encode_image(gar)
        x = torch.randn(1, tr.config.in_channels, 2, *r.shape[-2:])
        t = torch.tensor([600.0])
        tc, tu = comp.text_encoder(["walks forward"]), comp.text_encoder([""])
        torch.testing.assert_close(garment_guided_flow(tr, r, g, g, x, t, tc, tu, 3.0, 2.5),
                                   cfg_flow(tr, r, g, x, t, tc, tu, 3.0), rtol=1e-5, atol=1e-5)
    plain = teacher_generate(comp, ref, gar, ["walks forward"], 5, 2, 3.0, "renoise", eta=0.6)
    same = teacher_generate(comp, ref, gar, ["walks forward"], 5, 2, 3.0, "renoise", eta=0.6, garment_guidance=1.0)
    guided = teacher_generate(comp, ref, gar, ["walks forward"], 5, 2, 3.0, "renoise", eta=0.6, garment_guidance=3.0)
    assert torch.equal(plain, same)
    assert torch.isfinite(guided).all() and (guided - plain).abs().max() > 1e-4
    with pytest.raises(ValueError, match="garment_guidance"):
        teacher_generate(comp, ref, gar, ["walks forward"], 5, 2, 3.0, garment_guidance=float("nan"))


def test_write_mp4_even_size(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (3, 17, 13, 3), dtype=np.uint8)
    p = write_mp4(tmp_path / "x.mp4", frames, fps=24)
    with av.open(str(p)) as box:
        f = next(box.decode(video=0))
        assert (f.height, f.width) == (16, 12)


def test_wan22_config_parses_and_fails_clearly_without_weights(tmp_path):
    cfg = load_yaml_config(ROOT / "teacher/configs/wan2.2-5b.yaml", train_teacher.SECTIONS)
    assert cfg["model"].preset == "wan2.2-5b" and cfg["train"].mixed_precision == "bf16"
    assert cfg["data"].source == "folder" and cfg["data"].frames == 81
    missing = ModelConfig(**{**vars(cfg["model"]), "pretrained": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="nope"):
        build_components(missing)


def test_tiny_config_parses():
    cfg = load_yaml_config(ROOT / "teacher/configs/tiny.yaml", train_teacher.SECTIONS)
    assert cfg["model"].preset == "tiny" and cfg["train"].num_threads == 1
    assert json.loads(json.dumps(vars(cfg["data"])))["frames"] == 21


def test_wide_gpu_config_builds_the_wider_transformer():
    """The next GPU lease's from-scratch teacher: the tiny preset with the transformer widened by config only."""
    cfg = load_yaml_config(ROOT / "teacher/configs/tiny_wide_gpu.yaml", train_teacher.SECTIONS)
    comp = build_components(cfg["model"])
    tiny = build_components(ModelConfig(preset="tiny"))
    n = lambda c: sum(p.numel() for p in c.transformer.parameters())  # noqa: E731
    assert comp.transformer.config.attention_head_dim == cfg["model"].transformer["attention_head_dim"]
    assert n(comp) > 3 * n(tiny) and comp.preset.stream.timestep_shift == 1.0


def test_garment_region_weight_follows_vae_grouping():
    from teacher.common import latent_region_weight

    T, H, W, factor, sp = 9, 16, 24, 4, 8  # 3 latent frames of 2 x 3 cells
    mask = torch.zeros(1, T, H, W)
    mask[0, 5, :sp, :sp] = 1.0  # pixel frame 5 belongs to latent frame 2 (frames 5..8)
    mask[0, 0, sp:, 2 * sp:] = 0.5
    w = latent_region_weight(mask, (1, 16, 3, H // sp, W // sp), factor, extra=10.0)
    expect = torch.ones(1, 1, 3, 2, 3)
    expect[0, 0, 2, 0, 0] = 11.0
    expect[0, 0, 0, 1, 2] = 6.0
    assert torch.allclose(w, expect)
    assert latent_region_weight(mask, (1, 16, 3, 2, 3), factor, extra=0.0) is None
    assert latent_region_weight(None, (1, 16, 3, 2, 3), factor, extra=10.0) is None
    with pytest.raises(ValueError, match="frames"):
        latent_region_weight(mask[:, :5], (1, 16, 3, 2, 3), factor, extra=10.0)


def test_garment_and_body_weights_add():
    """`region_loss_weight`: 1 + g * garment coverage + b * body coverage; None when both weights are 0."""
    from teacher.common import region_loss_weight

    T, H, W, factor, sp = 5, 16, 16, 4, 8  # 2 latent frames of 2 x 2 cells
    body = torch.zeros(1, T, H, W)
    body[:, :, :, :sp] = 1.0  # the left column of cells is person
    garment = torch.zeros(1, T, H, W)
    garment[:, :, :sp, :sp] = 1.0  # its top cell is garment
    batch = {"garment_mask": garment, "body_mask": body}
    shape = (1, 16, 2, H // sp, W // sp)
    w = region_loss_weight(batch, shape, factor, DataConfig(garment_loss_weight=10.0, body_loss_weight=3.0))
    expect = torch.ones(1, 1, 2, 2, 2)
    expect[..., 0, 0] = 14.0
    expect[..., 1, 0] = 4.0
    assert torch.equal(w, expect)
    only_body = region_loss_weight({"body_mask": body}, shape, factor, DataConfig(body_loss_weight=3.0))
    assert torch.equal(only_body, torch.where(expect > 1, 4.0, 1.0))
    assert region_loss_weight(batch, shape, factor, DataConfig()) is None
    with pytest.raises(ValueError, match="body_loss_weight"):
        DataConfig(body_loss_weight=-1.0)


def test_region_weighted_loss_is_a_weighted_mean():
    fm = build_components(ModelConfig(preset="test")).fm
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 2, 3, generator=g), torch.randn(2, 4, 3, 2, 3, generator=g)
    t = torch.tensor([100.0, 700.0])
    plain = per_frame_bell_mse(fm, pred, target, t, "uniform")
    # constant weights change nothing; weight on one cell pulls the loss toward that cell's error
    assert torch.allclose(per_frame_bell_mse(fm, pred, target, t, "uniform", torch.full((2, 1, 3, 2, 3), 7.0)),
                          plain)
    region = torch.ones(2, 1, 3, 2, 3)
    region[:, :, :, 0, 0] = 1e6
    cell = (pred - target).pow(2).mean(dim=1)[:, :, 0, 0].mean()
    assert torch.allclose(per_frame_bell_mse(fm, pred, target, t, "uniform", region), cell, rtol=1e-4)
    bell = per_frame_bell_mse(fm, pred, target, t, "bell", torch.ones(2, 1, 3, 2, 3))
    assert torch.allclose(bell, per_frame_bell_mse(fm, pred, target, t, "bell"))


def test_transfer_scores_tell_garments_apart():
    """The scorer behind `teacher.sample --score`: a real clip wears the garment image, not the reference's."""
    from fashionchameleon.evaluate import Evaluator
    from teacher.sample import heldout_examples, summarise_by_prompt, summarise_scores, to_uint8, transfer_scores

    comp = build_components(ModelConfig(preset="tiny"))
    ev = Evaluator()
    scores = []
    for ex in heldout_examples(comp, "test", 3, 9, 0):
        video, gar, old = to_uint8(ex["video"]), to_uint8(ex["garment"]), ex["reference_garment"]
        s = transfer_scores(video, gar, old, ev)
        assert s["frames"] > 0
        scores.append(s | {"prompt": ex["prompt"]})
        # the same clip scored against swapped garments flips the preference
        assert transfer_scores(video, old, gar, ev)["transfer"] < s["transfer"]
        # body score: the real clip against itself keeps the body; background-only frames lose it
        assert transfer_scores(video, gar, old, ev, real=video)["silhouette"] == 1.0
        empty = np.broadcast_to(video[:, :4, :4].mean(axis=(1, 2), keepdims=True), video.shape).astype(np.uint8)
        assert transfer_scores(empty, gar, old, ev, real=video)["silhouette"] < 0.1
    summary = summarise_scores(scores)
    assert summary["transfer"] > 0.9 and summary["fidelity"] > summary["fidelity_old"]
    by_prompt = summarise_by_prompt(scores)
    assert sum(v["examples"] for v in by_prompt.values()) == len(scores)
    assert set(by_prompt) == {s["prompt"] for s in scores}


def test_scores_carry_the_vae_ceiling(tmp_path):
    """`--score` also scores the real clips' VAE round trip, the ceiling of any sample in that latent space: with the
    shipped VAE it keeps the body (silhouette near, not at, 1) and the garment, where a 1-step sample does not."""
    from fashionchameleon.evaluate import Evaluator
    from teacher.sample import heldout_examples, vae_roundtrip

    comp = load_stage(ROOT / "assets/checkpoints/teacher_tiny")
    exs = heldout_examples(comp, "test", 2, 9, 0)
    rt = vae_roundtrip(comp, exs[0]["video"])
    assert rt.shape == exs[0]["video"].shape and rt.dtype == torch.float32
    res = render_examples(comp, exs, tmp_path, frames=9, steps=1, guidance=1.0, seed=0, mp4=False,
                          evaluator=Evaluator())
    ceiling, gen = res["scores"]["vae_roundtrip"], res["scores"]["generated"]
    assert ceiling["examples"] == 2 and 0.75 < ceiling["silhouette"] < 1.0
    assert ceiling["silhouette"] > gen["silhouette"] and ceiling["transfer"] > 0.5
    assert set(res["scores"]["vae_roundtrip_by_prompt"]) == {ex["prompt"] for ex in exs}
    # each held-out example names its garment's pattern, and the generated scores are also summarised per pattern
    from fashionchameleon.data import PATTERNS

    assert all(ex["pattern"] in PATTERNS for ex in exs)
    assert set(res["scores"]["by_pattern"]) == {ex["pattern"] for ex in exs}
    assert sum(v["examples"] for v in res["scores"]["by_pattern"].values()) == gen["examples"]


def test_model_stream_override_reaches_the_stage_folder(tmp_path, teacher_run):
    """`model.stream` (e.g. the tiny runs' timestep shift) replaces the init stage's stream settings, drives the
    training noise schedule and is written to the next stage folder, so the students and the engine inherit it."""
    from teacher.common import save_stage

    out, _ = teacher_run
    comp = build_components(ModelConfig(init=str(out / "final"), stream={"timestep_shift": 1.0}))
    assert comp.preset.stream.timestep_shift == 1.0 and comp.fm.shift == 1.0
    assert comp.preset.stream.cache_frames == load_stage(out / "final").preset.stream.cache_frames
    save_stage(tmp_path / "s", comp)
    eng = StreamingEngine.from_checkpoint(tmp_path / "s")
    assert eng.fm.shift == 1.0
    with pytest.raises((TypeError, ValueError)):
        build_components(ModelConfig(init=str(out / "final"), stream={"no_such_field": 1}))


def test_smoke_with_data_workers(tmp_path):
    """Worker processes fork after the main process rendered the eval examples with OpenCV (a cv2 thread call in
    the worker init used to deadlock right there), and ship uint8 batches."""
    res = train_teacher.main(["--config", SMOKE, "--smoke", "--out", str(tmp_path), "--workers", "1",
                              "--max-minutes", "5"])
    assert res["step"] == 4 and np.isfinite(res["loss"]) and res["data_s"] >= 0


def test_components_place_moves_the_frozen_vae_and_text_encoder():
    """The trainer moves only the models it holds; the stages' frozen VAE and text encoder follow via `place`
    (on the first GPU run the VAE stayed on the host and the first step failed on a device mismatch)."""
    comp = build_components(ModelConfig(preset="test"))
    assert comp.place("meta") is comp
    for m in (comp.vae, comp.text_encoder):
        tensors = list(m.parameters()) + list(m.buffers())
        assert tensors and all(t.device.type == "meta" for t in tensors)
    assert next(comp.transformer.parameters()).device.type == "cpu"  # the trained model is the trainer's to move


def test_model_transformer_override_builds_and_saves_the_wider_model(tmp_path, teacher_run):
    """`model.transformer` widens a from-scratch model; the shapes reach preset.json, so the stage folder reloads.
    Unknown keys, and overrides on top of weights that fix the shapes, fail with the reason."""
    from teacher.common import save_stage

    base = build_components(ModelConfig(preset="test"))
    dim = base.transformer.config.attention_head_dim
    comp = build_components(ModelConfig(preset="test", transformer={"attention_head_dim": 2 * dim}))
    assert comp.transformer.config.attention_head_dim == 2 * dim
    assert comp.preset.transformer["attention_head_dim"] == 2 * dim
    n = lambda c: sum(p.numel() for p in c.transformer.parameters())  # noqa: E731
    assert n(comp) > n(base)
    save_stage(tmp_path / "s", comp)
    assert load_stage(tmp_path / "s").transformer.config.attention_head_dim == 2 * dim
    with pytest.raises(ValueError, match="no_such_key"):
        build_components(ModelConfig(preset="test", transformer={"no_such_key": 1}))
    out, _ = teacher_run
    with pytest.raises(ValueError, match="from-scratch"):
        build_components(ModelConfig(init=str(out / "final"), transformer={"attention_head_dim": 2 * dim}))


def test_lr_flag_overrides_the_config():
    """`--lr` (run 7's learning-rate runs) replaces train.lr like the other shared flags; a bad value is refused."""
    from teacher.common import apply_overrides, stage_parser

    cfg = load_yaml_config(SMOKE, train_teacher.SECTIONS)
    for argv, want in ((["--config", SMOKE], cfg["train"].lr), (["--config", SMOKE, "--lr", "2.4e-3"], 2.4e-3)):
        args = stage_parser("t").parse_args(argv)
        train_cfg, _ = apply_overrides(args, cfg["train"], cfg["data"], cfg["smoke"])
        assert train_cfg.lr == want
    with pytest.raises(ValueError, match="lr must be > 0"):
        apply_overrides(stage_parser("t").parse_args(["--config", SMOKE, "--lr", "-1"]), cfg["train"], cfg["data"],
                        cfg["smoke"])
    # --mixed-precision (gpu_lease.sh MIXED=no reproduces run 5's fp32 compute)
    args = stage_parser("t").parse_args(["--config", SMOKE, "--mixed-precision", "no"])
    assert apply_overrides(args, cfg["train"], cfg["data"], cfg["smoke"])[0].mixed_precision == "no"
    with pytest.raises(SystemExit):
        stage_parser("t").parse_args(["--config", SMOKE, "--mixed-precision", "fp8"])


def test_adaln_zero_init_starts_every_block_as_the_identity(teacher_run):
    """`model.init_scheme: adaln_zero` (run 8): the from-scratch transformer outputs zeros, its blocks leave the
    hidden states unchanged (same output with the blocks removed), and the gradient still reaches the blocks after
    one step. Weights from a stage folder are never re-initialised."""
    torch.manual_seed(0)
    comp = build_components(ModelConfig(preset="test", init_scheme="adaln_zero"))
    tr = comp.transformer
    cfg = tr.config
    x = torch.randn(2, cfg.in_channels, 3, 4, 4)
    t = torch.rand(2, 3) * 1000
    text = torch.randn(2, 5, cfg.text_dim)
    out = tr(x, t, text, return_dict=False)[0]
    assert out.shape == x.shape and torch.count_nonzero(out) == 0
    with torch.no_grad():  # a non-zero head shows what the blocks pass through
        tr.proj_out.weight.normal_()
        tr.proj_out.bias.normal_()
    with_blocks = tr(x, t, text, return_dict=False)[0]
    blocks, tr.blocks = tr.blocks, torch.nn.ModuleList()
    without = tr(x, t, text, return_dict=False)[0]
    tr.blocks = blocks
    torch.testing.assert_close(with_blocks, without, rtol=0, atol=0)
    # one SGD step opens the gates, after which the attention weights get gradient
    opt = torch.optim.SGD(tr.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        tr(x, t, text, return_dict=False)[0].square().mean().backward()
        opt.step()
    assert tr.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    default = build_components(ModelConfig(preset="test"))
    assert torch.count_nonzero(default.transformer.proj_out.weight) > 0
    with pytest.raises(ValueError, match="init_scheme"):
        ModelConfig(preset="test", init_scheme="xavier")
    out, _ = teacher_run
    with pytest.raises(ValueError, match="from-scratch"):
        build_components(ModelConfig(init=str(out / "final"), init_scheme="adaln_zero"))


def test_data_fps_and_clip_start_are_for_folder_data_only():
    from teacher.common import DataConfig

    assert DataConfig(source="folder", root="x", fps=24).fps == 24
    with pytest.raises(ValueError, match="data.fps resamples folder videos"):
        DataConfig(source="world", fps=24)
    with pytest.raises(ValueError, match="data.fps must be > 0"):
        DataConfig(source="folder", fps=0)
    with pytest.raises(ValueError, match="data.clip_start must be one of"):
        DataConfig(source="folder", clip_start="middle")
    with pytest.raises(ValueError, match="clip_start places windows in folder videos"):
        DataConfig(source="world", clip_start="random")
    cfg = load_yaml_config(ROOT / "teacher/configs/wan2.2-5b.yaml", train_teacher.SECTIONS)
    assert cfg["data"].fps == 24  # Wan2.2's rate; real footage at 25/30/60 fps keeps its speed
    assert cfg["data"].clip_start == "random"
