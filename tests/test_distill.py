"""Stage 2 (teacher forcing, GR-DMD) and stage 3 (export): numeric checks on the `test` preset, CPU, seconds each."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import export, train_dmd, train_tf
from distill.dmd import dmd_gradient, weighted_dmd_loss
from distill.reward import (RewardConfig, chunk_rewards, chunk_weights, colour_fidelity, per_chunk, per_latent,
                            sharpness)
from distill.rollout import draw_exit_step, rollout
from distill.train_tf import TFMask, tf_forward
from fashionchameleon.configs import get_preset
from fashionchameleon.stream import StreamingEngine
from teacher import train_teacher
from teacher.common import ModelConfig, build_components, load_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    train_teacher.main(["--config", str(ROOT / "teacher/configs/smoke.yaml"), "--smoke", "--out", str(root / "t")])
    tf = train_tf.main(["--config", str(ROOT / "distill/configs/tf_smoke.yaml"), "--smoke", "--out", str(root / "tf"),
                        "--init", str(root / "t/final")])
    return root, tf


def _dmd_args(root, out):
    return ["--config", str(ROOT / "distill/configs/dmd_smoke.yaml"), "--smoke", "--out", str(out),
            "--init", str(root / "tf/final"), "--teacher", str(root / "t/final")]


def test_tf_and_dmd_smoke_write_loadable_checkpoints(stages, tmp_path):
    root, tf = stages
    assert tf["step"] == 4 and np.isfinite(tf["loss"])
    load_stage(root / "tf/final")
    res = train_dmd.main(_dmd_args(root, tmp_path / "dmd"))
    assert res["step"] == 6 and np.isfinite(res["critic_loss"]) and np.isfinite(res["gen_loss"])
    eng = StreamingEngine.from_checkpoint(tmp_path / "dmd/final")
    frames = list(eng.new_session().start(np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8),
                                          "walks forward", max_frames=5))
    assert len(frames) == 5
    # the generator moved, the frozen VAE did not
    g0, g1 = load_stage(root / "tf/final"), load_stage(tmp_path / "dmd/final")
    a, b = g0.transformer.state_dict(), g1.transformer.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    va, vb = g0.vae.state_dict(), g1.vae.state_dict()
    assert all(torch.equal(va[k], vb[k]) for k in va)


def test_dmd_resume_continues_exactly(stages, tmp_path):
    root, _ = stages
    full = tmp_path / "full"
    train_dmd.main(_dmd_args(root, full))
    part = tmp_path / "part"
    train_dmd.main(_dmd_args(root, part) + ["--until", "3"])
    res = train_dmd.main(_dmd_args(root, part) + ["--resume"])
    assert res["step"] == 6
    a = load_stage(full / "final").transformer.state_dict()
    b = load_stage(part / "final").transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tf_gradient_only_from_visible_clean_frames():
    """Noisy chunk j sees clean chunks < j only, so the last clean chunk (and nothing of the noisy conditions'
    outputs) can influence the loss: its input gradient is exactly zero; earlier clean chunks do get gradient."""
    comp = build_components(ModelConfig(preset="test"))
    tr, stream = comp.transformer, comp.preset.stream
    c, k = stream.chunk_frames, stream.cond_frames
    g = torch.Generator().manual_seed(0)
    z = tr.config.in_channels
    f = 2 * c
    ref = torch.randn(1, z, 1, 4, 4, generator=g)
    gar = torch.randn(1, z, 1, 4, 4, generator=g)
    clean = torch.randn(1, z, f, 4, 4, generator=g, requires_grad=True)
    x_t = torch.randn(1, z, f, 4, 4, generator=g, requires_grad=True)
    t = torch.tensor([[300.0] * c + [800.0] * c])
    mask = TFMask(c, k)(k + f, tr.tokens_per_frame(4, 4), torch.device("cpu"), False)
    pred = tf_forward(tr, ref, gar, clean, x_t, t, comp.text_encoder(["walks forward"]), mask)
    assert pred.shape == x_t.shape
    (pred * torch.randn(pred.shape, generator=g)).sum().backward()
    gc = clean.grad.abs().sum(dim=(0, 1, 3, 4))
    assert torch.all(gc[c:] == 0), gc
    assert torch.all(gc[:c] > 0), gc
    # noisy chunk j only sees its own noisy frames: d pred[chunk 0] / d x_t[chunk 1] = 0
    x_t.grad = None
    clean.grad = None
    pred = tf_forward(tr, ref, gar, clean, x_t, t, comp.text_encoder(["walks forward"]), mask)
    pred[:, :, :c].sum().backward()
    gx = x_t.grad.abs().sum(dim=(0, 1, 3, 4))
    assert torch.all(gx[c:] == 0) and torch.all(gx[:c] > 0)


def test_tau_inf_equals_vanilla_dmd():
    g = torch.Generator().manual_seed(0)
    b, z, f, h, w, c = 2, 4, 6, 3, 3, 3
    x = torch.randn(b, z, f, h, w, generator=g, requires_grad=True)
    x0_real = torch.randn(b, z, f, h, w, generator=g)
    x0_fake = torch.randn(b, z, f, h, w, generator=g)
    rewards = torch.rand(b, f // c, generator=g)
    grad = dmd_gradient(x, x0_real, x0_fake)
    # per-sample normalisation (DMD eq. 8)
    manual = (x0_fake - x0_real) / (x.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    assert torch.allclose(grad, manual)
    w_inf = chunk_weights(rewards, c, f, math.inf)
    assert torch.allclose(w_inf, torch.full((b, f), 1 / f))
    loss = weighted_dmd_loss(x, grad, w_inf)
    (gx,) = torch.autograd.grad(loss, x)
    vanilla = 0.5 * F.mse_loss(x, (x - grad).detach())
    (gv,) = torch.autograd.grad(vanilla, x)
    assert torch.allclose(loss, vanilla, atol=1e-7) and torch.allclose(gx, gv, atol=1e-9)
    # finite tau with equal rewards is also vanilla; unequal rewards change the gradient
    w_eq = chunk_weights(torch.zeros(b, f // c), c, f, 0.2)
    assert torch.allclose(weighted_dmd_loss(x, grad, w_eq), vanilla, atol=1e-7)
    (g_rw,) = torch.autograd.grad(weighted_dmd_loss(x, grad, chunk_weights(rewards, c, f, 0.2)), x)
    assert not torch.allclose(g_rw, gv)


def test_garment_weight_scales_the_dmd_gradient_on_the_segmented_garment():
    """dmd.garment_weight: the loss's gradient is spatial * grad * A, and the spatial map is 1 + (w - 1) * the
    evaluation model's upper-garment share per latent cell (here on a real world clip: it sits on the GT garment)."""
    from distill.reward import garment_weight_map
    from fashionchameleon.data import WorldDataset
    from fashionchameleon.evaluate import Evaluator

    g = torch.Generator().manual_seed(0)
    b, z, f, h, w = 2, 4, 6, 4, 4
    x = torch.randn(b, z, f, h, w, generator=g, requires_grad=True)
    grad = torch.randn(b, z, f, h, w, generator=g)
    a = chunk_weights(torch.rand(b, 2, generator=g), 3, f, 0.2)
    spatial = 1 + 2 * torch.rand(b, 1, f, h, w, generator=g)
    (gx,) = torch.autograd.grad(weighted_dmd_loss(x, grad, a, spatial), x)
    assert torch.allclose(gx, spatial * grad * a[:, None, :, None, None] / (b * z * h * w), atol=1e-6)
    (g1,) = torch.autograd.grad(weighted_dmd_loss(x, grad, a, torch.ones(b, 1, f, h, w)), x)
    (g0,) = torch.autograd.grad(weighted_dmd_loss(x, grad, a), x)
    assert torch.equal(g1, g0)
    # the map on a real clip (21 frames = 6 latent frames of 4 pixel frames after the first)
    ds = WorldDataset(split="test", size=(160, 128), frames=21, length=2, seed=3, garment_masks=True)
    ex = [ds[i] for i in range(2)]
    pix = torch.stack([e["video"] for e in ex])  # [B, 3, T, H, W] in [-1, 1]
    m = garment_weight_map(pix, Evaluator(), 3.0, 4, (20, 16))
    assert m.shape == (2, 1, 6, 20, 16) and m.min() >= 1.0 and m.max() <= 3.0
    gt = torch.stack([e["garment_mask"] for e in ex]).float()  # [B, T, H, W]
    gt = F.adaptive_avg_pool2d(gt, (20, 16))[:, 0]  # the first frame (its own latent frame)
    share = (m[:, 0, 0] - 1) / 2
    assert (share * gt).sum() / gt.sum() > 0.6 and (share * (1 - gt)).sum() / (1 - gt).sum() < 0.1
    from distill.train_dmd import DMDConfig

    with pytest.raises(ValueError, match="garment_weight"):
        DMDConfig(garment_weight=0.0)


def test_softmax_weights_favour_low_reward_chunks():
    r = torch.tensor([[0.9, 0.1, 0.5]])
    w = chunk_weights(r, chunk_frames=2, frames=6, tau=0.2)
    assert torch.allclose(w.sum(1), torch.ones(1))
    per_c = w.view(1, 3, 2).sum(-1)[0]
    assert per_c[1] > per_c[2] > per_c[0]
    assert torch.allclose(w[0, 0], w[0, 1])  # one weight per chunk, broadcast over its frames
    # ratio follows exp(-dR / tau)
    assert torch.allclose(per_c[1] / per_c[0], torch.exp(torch.tensor(0.8 / 0.2)))
    with pytest.raises(ValueError):
        chunk_weights(r, 2, 6, 0.0)


@pytest.mark.parametrize("context_noise", [0.0, 200.0])
def test_rollout_matches_streaming_session(context_noise):
    engine = StreamingEngine.from_preset("test", seed=3)
    engine.stream_config.context_noise = context_noise
    cfg = engine.stream_config
    rng = np.random.default_rng(0)
    ref_img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    gar_img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    chunks = 2
    s = engine.new_session(policy="disentangle")
    s.begin(ref_img, gar_img, "walks forward", seed=7)
    for _ in range(chunks):
        s.step()
    session_latents = torch.cat(s.history_latents(), dim=2)
    assert session_latents.shape[2] == chunks * cfg.chunk_frames
    ref, gar = engine.encode_reference(ref_img), engine.encode_garment(gar_img)
    text = engine.encode_text("walks forward")
    with torch.no_grad():
        out = rollout(engine.transformer, engine.fm, cfg, ref, gar, text, chunks,
                      generator=torch.Generator().manual_seed(7))
    ours = torch.cat(out, dim=2)
    assert torch.allclose(ours, session_latents, atol=1e-5), (ours - session_latents).abs().max()
    if context_noise:  # the re-noised commit changes what the next chunk sees
        clean = StreamingEngine.from_preset("test", seed=3)
        s0 = clean.new_session(policy="disentangle")
        s0.begin(ref_img, gar_img, "walks forward", seed=7)
        s0.step()
        first = torch.cat(s0.history_latents(), dim=2)
        s0.step()
        other = torch.cat(s0.history_latents(), dim=2)
        f = cfg.chunk_frames
        assert torch.allclose(first[:, :, :f], session_latents[:, :, :f], atol=1e-5)
        assert not torch.allclose(other[:, :, f:], session_latents[:, :, f:], atol=1e-3)


@pytest.mark.parametrize("policy", ["anchored", "disentangle"])
def test_swap_rollout_matches_a_streaming_session_that_swaps(policy):
    """distill.rollout.swap_rollout: one chunk in garment 1, a swap to garment 2, three chunks after it (the
    anchored restore runs at the second and third), equal to what StreamingSession generates after the swap."""
    from distill.rollout import swap_rollout

    engine = StreamingEngine.from_preset("test", seed=3)
    engine.stream_config.context_noise = 200.0
    cfg = engine.stream_config
    rng = np.random.default_rng(1)
    ref_img, gar_img, gar2_img = (rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3))
    after = 3
    s = engine.new_session(policy=policy)
    s.begin(ref_img, gar_img, "walks forward", seed=7)
    s.step()
    s.request_swap(gar2_img)
    for _ in range(after):
        s.step()
    session_latents = torch.cat(s.history_latents(), dim=2)  # the swap withdrew everything before it
    assert session_latents.shape[2] == after * cfg.chunk_frames
    assert len(s.restore_frames) == (2 if policy == "anchored" else 0)
    ref, gar, gar2 = engine.encode_reference(ref_img), engine.encode_garment(gar_img), engine.encode_garment(gar2_img)
    text = engine.encode_text("walks forward")
    with torch.no_grad():
        out = swap_rollout(engine.transformer, engine.fm, cfg, engine.vae, ref, gar, gar2, text, after,
                           generator=torch.Generator().manual_seed(7), policy=policy)
    ours = torch.cat(out, dim=2)
    assert torch.allclose(ours, session_latents, atol=1e-5), (ours - session_latents).abs().max()
    if policy == "anchored":  # the restore is what separates it from disentangle, from the second chunk on
        with torch.no_grad():
            plain = torch.cat(swap_rollout(engine.transformer, engine.fm, cfg, engine.vae, ref, gar, gar2, text, after,
                                           generator=torch.Generator().manual_seed(7), policy="disentangle"), dim=2)
        f = cfg.chunk_frames
        assert torch.allclose(plain[:, :, :f], ours[:, :, :f], atol=1e-5)
        assert not torch.allclose(plain[:, :, f:], ours[:, :, f:], atol=1e-3)
    with pytest.raises(ValueError, match="disentangle or anchored"):
        swap_rollout(engine.transformer, engine.fm, cfg, engine.vae, ref, gar, gar2, text, 1, policy="withdraw")


def _rollout_setup():
    """A `test`-preset student and one random (ref, garment, text) condition; `g` continues the seeded stream."""
    comp = build_components(ModelConfig(preset="test"))
    tr = comp.transformer
    z = tr.config.in_channels
    g = torch.Generator().manual_seed(0)
    ref, gar = torch.randn(1, z, 1, 4, 4, generator=g), torch.randn(1, z, 1, 4, 4, generator=g)
    return comp, tr, comp.preset.stream, ref, gar, comp.text_encoder(["walks forward"]).detach(), g


def test_rollout_gradient_only_through_exit_step():
    comp, tr, stream, ref, gar, text, g = _rollout_setup()
    outs = rollout(tr, comp.fm, stream, ref, gar, text, 2, exit_step=1, grad=True, generator=g)
    assert all(o.requires_grad for o in outs)
    torch.cat(outs, 2).pow(2).mean().backward()
    assert tr.proj_out.weight.grad.abs().sum() > 0
    ex = {draw_exit_step(stream, 0, s) for s in range(64)}
    assert ex == set(range(len(stream.denoising_steps)))
    assert draw_exit_step(stream, 0, 5) == draw_exit_step(stream, 0, 5)


def test_long_rollout_scores_a_window_with_grad_only_there():
    """dmd.rollout_chunks: the long rollout equals the plain one chunk for chunk (same noise), and only the
    scored window (the last `grad_last` chunks) carries gradients."""
    from distill.train_dmd import DMDConfig, rollout_length

    comp, tr, stream, ref, gar, text, g = _rollout_setup()
    outs = rollout(tr, comp.fm, stream, ref, gar, text, 5, exit_step=2, grad=True,
                   generator=torch.Generator().manual_seed(1), grad_last=2)
    assert [o.requires_grad for o in outs] == [False, False, False, True, True]
    with torch.no_grad():
        plain = rollout(tr, comp.fm, stream, ref, gar, text, 5, exit_step=2,
                        generator=torch.Generator().manual_seed(1))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, plain))
    cfg = DMDConfig(chunks=2, rollout_chunks=6)
    lengths = {rollout_length(cfg, 0, s) for s in range(200)}
    assert lengths == set(range(2, 7))
    assert rollout_length(cfg, 0, 9) == rollout_length(cfg, 0, 9)
    assert rollout_length(DMDConfig(chunks=2), 0, 9) == 2
    with pytest.raises(ValueError, match="rollout_chunks"):
        DMDConfig(chunks=3, rollout_chunks=2)


def test_critic_warmup_delays_generator_updates(stages, tmp_path):
    from distill.train_dmd import DMDConfig, generator_step

    assert [s for s in range(12) if generator_step(DMDConfig(gen_update_every=5), s)] == [0, 5, 10]
    assert [s for s in range(20) if generator_step(DMDConfig(gen_update_every=5, critic_warmup=7), s)] == [7, 12, 17]
    with pytest.raises(ValueError, match="critic_warmup"):
        DMDConfig(critic_warmup=-1)
    # a smoke run that never reaches the warm-up end trains only the critic: the generator stays bit-identical
    root, _ = stages
    cfg = tmp_path / "dmd.yaml"
    smoke = (ROOT / "distill/configs/dmd_smoke.yaml").read_text()
    cfg.write_text(smoke.replace("dmd:\n", "dmd:\n  critic_warmup: 100\n"))
    res = train_dmd.main(["--config", str(cfg), "--smoke", "--out", str(tmp_path / "w"), "--init",
                          str(root / "tf/final"), "--teacher", str(root / "t/final")])
    assert np.isfinite(res["critic_loss"])
    a = load_stage(root / "tf/final").transformer.state_dict()
    b = load_stage(tmp_path / "w/final").transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dmd_exports_its_critic_and_a_continuation_starts_from_it(stages, tmp_path):
    from distill.train_dmd import DMDConfig, check_critic_shape

    root, _ = stages
    train_dmd.main(_dmd_args(root, tmp_path / "a"))
    first = load_stage(tmp_path / "a/final_critic").transformer.state_dict()
    teacher = load_stage(root / "t/final").transformer.state_dict()
    assert any(not torch.equal(first[k], teacher[k]) for k in first)  # the critic trained
    # a continuation whose critic cannot move (lr 0) ends with exactly the critic it was given, not the teacher's
    cfg = tmp_path / "cont.yaml"
    smoke = (ROOT / "distill/configs/dmd_smoke.yaml").read_text()
    cfg.write_text(smoke.replace("critic_lr: 1.0e-4", f"critic_lr: 0.0\n  critic_init: {tmp_path / 'a/final_critic'}"))
    train_dmd.main(["--config", str(cfg), "--smoke", "--out", str(tmp_path / "b"), "--init", str(root / "tf/final"),
                    "--teacher", str(root / "t/final")])
    second = load_stage(tmp_path / "b/final_critic").transformer.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # the bare transformer folder (what ships beside a student) loads the same weights; anything else is refused
    from distill.train_dmd import load_critic

    bare = load_critic(tmp_path / "a/final_critic/transformer").state_dict()
    assert all(torch.equal(first[k], bare[k]) for k in first)
    with pytest.raises(FileNotFoundError, match="neither a stage folder"):
        load_critic(tmp_path)
    # another architecture is refused with both names in the message
    comp = load_stage(root / "t/final")
    other = type(comp.transformer)(**{**{k: v for k, v in comp.transformer.config.items() if not k.startswith("_")},
                                      "num_layers": comp.transformer.config.num_layers + 1})
    with pytest.raises(ValueError, match="critic_init 'x'.*num_layers"):
        check_critic_shape(comp.transformer, other, DMDConfig(critic_init="x"))


def test_garment_guided_real_score_matches_separate_forwards(stages, tmp_path):
    """dmd.garment_guidance: the batched three-branch real score equals v_u + s_t (v_c - v_u) + (s_g - 1)(v_c - v_blank)
    from separate forwards; 1 is the plain CFG real score; a smoke run with it trains and writes a stage."""
    from distill.dmd import score_x0
    from distill.train_dmd import DMDConfig
    from teacher.common import incontext_flow

    root, _ = stages
    comp = load_stage(root / "t/final")
    tr, fm = comp.transformer.eval(), comp.fm
    g = torch.Generator().manual_seed(3)
    z = comp.transformer.config.in_channels
    h, w = comp.preset.height // comp.preset.spatial_factor, comp.preset.width // comp.preset.spatial_factor
    ref, gar, blank = (torch.randn(2, z, 1, h, w, generator=g) for _ in range(3))
    x_t = torch.randn(2, z, 3, h, w, generator=g)
    t = torch.tensor([700.0, 300.0])
    text_c, text_u = comp.text_encoder(["walks forward", "waves"]), comp.text_encoder(["", ""])
    with torch.no_grad():
        v_c = incontext_flow(tr, ref, gar, x_t, t, text_c)
        v_u = incontext_flow(tr, ref, gar, x_t, t, text_u)
        v_n = incontext_flow(tr, ref, blank, x_t, t, text_c)
    want = fm.x0_from_flow(x_t, v_u + 2.0 * (v_c - v_u) + 1.5 * (v_c - v_n), t)
    got, _ = score_x0(fm, tr, tr, ref, gar, x_t, t, text_c, text_u, 2.0, 2.5, blank)
    assert torch.allclose(got, want, atol=1e-4)
    plain, _ = score_x0(fm, tr, tr, ref, gar, x_t, t, text_c, text_u, 2.0)
    assert torch.allclose(plain, fm.x0_from_flow(x_t, v_u + 2.0 * (v_c - v_u), t), atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)
    with pytest.raises(ValueError, match="gar_null"):
        score_x0(fm, tr, tr, ref, gar, x_t, t, text_c, text_u, 2.0, 2.5)
    with pytest.raises(ValueError, match="garment_guidance"):
        DMDConfig(garment_guidance=float("nan"))
    cfg = tmp_path / "dmd.yaml"
    cfg.write_text((ROOT / "distill/configs/dmd_smoke.yaml").read_text().replace("dmd:\n", "dmd:\n  garment_guidance: 2.0\n"))
    res = train_dmd.main(["--config", str(cfg), "--smoke", "--out", str(tmp_path / "gg"), "--init",
                          str(root / "tf/final"), "--teacher", str(root / "t/final")])
    assert np.isfinite(res["critic_loss"]) and (tmp_path / "gg/final/transformer").is_dir()


def _perturbed_teacher(root, dest, part: str, seed: int):
    """A copy of the smoke teacher with one part's weights (`transformer` or `text_encoder`) moved by noise."""
    from teacher.common import save_stage

    comp = load_stage(root / "t/final")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in getattr(comp, part).parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 else 1.0))
    save_stage(dest, comp)
    return dest


def _dmd_smoke(root, out, cfg_path, teacher, extra: str = ""):
    smoke = (ROOT / "distill/configs/dmd_smoke.yaml").read_text()
    cfg_path.write_text(smoke.replace("dmd:\n", f"dmd:\n  critic_init: {root / 't/final'}\n{extra}"))
    train_dmd.main(["--config", str(cfg_path), "--smoke", "--out", str(out), "--init", str(root / "tf/final"),
                    "--teacher", str(teacher)])
    return load_stage(out / "final").transformer.state_dict()


def test_real_score_reads_the_teachers_own_text_encoder(stages, tmp_path, monkeypatch):
    """A teacher trained further with its text encoder (sessions 19-20) must be scored with its own embeddings,
    not the generator's (session 21 fed it the student's); the critic keeps reading the generator's."""
    from distill.dmd import real_x0, score_x0
    from distill.train_dmd import real_score_text_encoder

    root, _ = stages
    gen, teacher = load_stage(root / "tf/final"), load_stage(root / "t/final")
    assert real_score_text_encoder(load_stage(root / "t/final"), teacher) is None  # same weights: shared
    other = load_stage(_perturbed_teacher(root, tmp_path / "pert", "text_encoder", 5))
    enc = real_score_text_encoder(other, gen)
    assert enc is other.text_encoder and not any(p.requires_grad for p in enc.parameters())
    # score_x0: the real branch reads `real_text`, the fake branch the generator's embeddings
    tr, fm = teacher.transformer.eval(), teacher.fm
    g = torch.Generator().manual_seed(4)
    z = tr.config.in_channels
    h, w = teacher.preset.height // teacher.preset.spatial_factor, teacher.preset.width // teacher.preset.spatial_factor
    ref, gar = (torch.randn(1, z, 1, h, w, generator=g) for _ in range(2))
    x_t, t = torch.randn(1, z, 3, h, w, generator=g), torch.tensor([600.0])
    with torch.no_grad():
        mine = (gen.text_encoder(["walks forward"]), gen.text_encoder([""]))
        own = (enc(["walks forward"]), enc([""]))
        real, fake = score_x0(fm, tr, tr, ref, gar, x_t, t, *mine, 2.0, real_text=own)
        assert torch.allclose(real, real_x0(fm, tr, ref, gar, x_t, t, *own, 2.0), atol=1e-5)
        assert not torch.allclose(real, real_x0(fm, tr, ref, gar, x_t, t, *mine, 2.0), atol=1e-4)
        _, fake_mine = score_x0(fm, tr, tr, ref, gar, x_t, t, *mine, 2.0)
        assert torch.equal(fake, fake_mine)
    # the training step hands the teacher's own negative-prompt embedding to the real score
    seen = []

    def spy(*args, **kwargs):
        seen.append(args[-1])
        return score_x0(*args, **kwargs)

    monkeypatch.setattr(train_dmd, "score_x0", spy)
    _dmd_smoke(root, tmp_path / "run", tmp_path / "dmd.yaml", tmp_path / "pert")
    assert seen and all(s is not None for s in seen)
    with torch.no_grad():
        assert all(torch.allclose(s[1], enc([""]), atol=1e-6) for s in seen)


def test_detail_teacher_scores_the_fine_noise_levels(stages, tmp_path):
    """dmd.detail_teacher: below detail_max_t it is the real score, above it `teacher` is. A split above every
    DMD noise level equals DMD against the detail teacher alone; one below them all equals DMD without it."""
    from distill.train_dmd import DMDConfig

    with pytest.raises(ValueError, match="detail_max_t"):
        DMDConfig(detail_teacher="x")
    root, _ = stages
    pert = _perturbed_teacher(root, tmp_path / "pert", "transformer", 6)
    detail = f"  detail_teacher: {root / 't/final'}\n"
    plain = _dmd_smoke(root, tmp_path / "plain", tmp_path / "a.yaml", root / "t/final")
    other = _dmd_smoke(root, tmp_path / "other", tmp_path / "b.yaml", pert)
    assert any(not torch.equal(plain[k], other[k]) for k in plain)  # the teacher matters
    all_detail = _dmd_smoke(root, tmp_path / "hi", tmp_path / "c.yaml", pert, detail + "  detail_max_t: 1000.0\n")
    no_detail = _dmd_smoke(root, tmp_path / "lo", tmp_path / "d.yaml", pert, detail + "  detail_max_t: 1.0\n")
    assert all(torch.equal(plain[k], all_detail[k]) for k in plain)
    assert all(torch.equal(other[k], no_detail[k]) for k in other)


def test_swap_iterations_score_the_chunks_after_a_swap_to_the_next_garment(stages, tmp_path, monkeypatch):
    """dmd.swap_prob: the drawn iterations roll out a swap (swap_rollout, the stream's anchored policy) from the
    batch's garment to the next sample's, and both scores judge the chunks after it against that new garment."""
    from distill.train_dmd import DMDConfig, swap_step

    with pytest.raises(ValueError, match="swap_prob"):
        DMDConfig(swap_prob=1.5)
    with pytest.raises(ValueError, match="swap_policy"):
        DMDConfig(swap_policy="withdraw")
    share = np.mean([swap_step(DMDConfig(swap_prob=0.3), 0, s) for s in range(400)])
    assert 0.2 < share < 0.4 and not any(swap_step(DMDConfig(), 0, s) for s in range(50))
    root, _ = stages
    swaps, scored = [], []
    real_swap, real_score = train_dmd.swap_rollout, train_dmd.score_x0

    def spy_swap(tr, fm, stream, vae, ref, gar, new_gar, *a, **kw):
        swaps.append((gar, new_gar))
        return real_swap(tr, fm, stream, vae, ref, gar, new_gar, *a, **kw)

    def spy_score(fm, real, fake, ref, gar, *a, **kw):
        scored.append(gar)
        return real_score(fm, real, fake, ref, gar, *a, **kw)

    monkeypatch.setattr(train_dmd, "swap_rollout", spy_swap)
    monkeypatch.setattr(train_dmd, "score_x0", spy_score)
    smoke = (ROOT / "distill/configs/dmd_smoke.yaml").read_text()
    cfg = tmp_path / "swap.yaml"
    cfg.write_text(smoke.replace("dmd:\n", "dmd:\n  swap_prob: 1.0\n").replace(
        "smoke:\n  max_steps: 6               # steps 0 and 5 update the generator\n  batch_size: 1",
        "smoke:\n  max_steps: 6\n  batch_size: 2"))
    res = train_dmd.main(["--config", str(cfg), "--smoke", "--out", str(tmp_path / "swap"), "--init",
                          str(root / "tf/final"), "--teacher", str(root / "t/final")])
    assert np.isfinite(res["critic_loss"]) and np.isfinite(res["gen_loss"])
    assert len(swaps) == 6 and len(scored) == 2  # every iteration swaps; steps 0 and 5 update the generator
    for old, new in swaps:
        assert old.shape[0] == 2 and torch.equal(new, old.roll(1, dims=0)) and not torch.equal(new, old)
    assert torch.equal(scored[0], swaps[0][1]) and torch.equal(scored[1], swaps[5][1])
    swapped = load_stage(tmp_path / "swap/final").transformer.state_dict()
    plain = tmp_path / "plain.yaml"
    plain.write_text(cfg.read_text().replace("  swap_prob: 1.0\n", ""))
    monkeypatch.undo()
    train_dmd.main(["--config", str(plain), "--smoke", "--out", str(tmp_path / "plain"), "--init",
                    str(root / "tf/final"), "--teacher", str(root / "t/final")])
    other = load_stage(tmp_path / "plain/final").transformer.state_dict()
    assert any(not torch.equal(swapped[k], other[k]) for k in swapped)


def test_garment_weight_smoke_run_logs_the_garment_share(stages, tmp_path):
    root, _ = stages
    cfg = tmp_path / "gw.yaml"
    cfg.write_text((ROOT / "distill/configs/dmd_smoke.yaml").read_text().replace("dmd:\n", "dmd:\n  garment_weight: 3.0\n"))
    res = train_dmd.main(["--config", str(cfg), "--smoke", "--out", str(tmp_path / "gw"), "--init",
                          str(root / "tf/final"), "--teacher", str(root / "t/final")])
    assert np.isfinite(res["gen_loss"])
    header = (tmp_path / "gw/log.csv").read_text().splitlines()[0].split(",")
    assert "garment_share" in header


def test_tf_anchor_adds_the_real_clip_teacher_forcing_loss(stages, tmp_path):
    """dmd.tf_anchor: the generator update also fits the real clip (the TF stage's loss at the student's steps);
    it needs clips, refuses bad weights, and moves the generator away from the anchor-free run of the same seed."""
    from distill.train_dmd import DMDConfig, make_step_fn
    from distill.train_tf import real_clip_loss, tf_loss
    from teacher.common import DataConfig, TextDiT

    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="tf_anchor"):
            DMDConfig(tf_anchor=bad)
    with pytest.raises(ValueError, match="tf_anchor_context_noise_max"):
        DMDConfig(tf_anchor_context_noise_max=-1.0)
    root, _ = stages
    comp = load_stage(root / "tf/final")
    with pytest.raises(ValueError, match="data.frames"):
        make_step_fn(comp, DMDConfig(tf_anchor=0.5), 0, DataConfig(frames=1))
    # the anchor is exactly the TF stage's objective on the batch's clip, at the sampler's steps
    gen = TextDiT(comp.transformer, None)
    stream, fm = comp.preset.stream, comp.fm
    frames = comp.preset.pixel_frames(2 * stream.chunk_frames)
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(2, *shape, generator=g) for k, shape in
             (("reference", (3, comp.preset.height, comp.preset.width)),
              ("garment", (3, comp.preset.height, comp.preset.width)),
              ("video", (3, frames, comp.preset.height, comp.preset.width)))}
    data = DataConfig(frames=frames, loss_weighting="uniform")
    masks = TFMask(stream.chunk_frames, stream.cond_frames)
    ref, gar, vid = (comp.vae.encode_image(batch["reference"]), comp.vae.encode_image(batch["garment"]),
                     comp.vae.encode_video(batch["video"]))
    text = comp.text_encoder(["walks forward", "waves"])
    steps = fm.few_step_timesteps(stream.denoising_steps, stream.warp_denoising_steps)
    torch.manual_seed(5)
    got = real_clip_loss(gen.transformer, comp, masks, batch, ref, gar, vid, text, data, steps, 0.0)
    torch.manual_seed(5)
    want = tf_loss(comp.transformer, fm, masks, ref, gar, vid, text, stream.chunk_frames, weighting="uniform",
                   choices=steps)
    assert torch.isfinite(got) and torch.allclose(got, want)
    # a smoke run with the anchor logs it and ends elsewhere than the same run without it
    smoke = (ROOT / "distill/configs/dmd_smoke.yaml").read_text().replace("  frames: 1 ", f"  frames: {frames} ")
    outs = {}
    for name, extra in (("plain", ""), ("anchor", "  tf_anchor: 5.0\n  tf_anchor_context_noise_max: 300.0\n")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(smoke.replace("dmd:\n", "dmd:\n" + extra))
        outs[name] = train_dmd.main(["--config", str(cfg), "--smoke", "--out", str(tmp_path / name), "--init",
                                     str(root / "tf/final"), "--teacher", str(root / "t/final")])
    log = (tmp_path / "anchor/log.csv").read_text().splitlines()
    col = log[0].split(",").index("anchor_loss")
    assert any(np.isfinite(float(r.split(",")[col])) for r in log[1:] if r.split(",")[col])
    a = load_stage(tmp_path / "plain/final").transformer.state_dict()
    b = load_stage(tmp_path / "anchor/final").transformer.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_grad_lowpass_keeps_the_coarse_dmd_signal_only():
    """dmd.grad_lowpass: the blur keeps a constant and a slow ramp, removes the finest (checkerboard) pattern,
    acts on H, W only, and 0 is the identity."""
    from distill.dmd import spatial_lowpass
    from distill.train_dmd import DMDConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 12, 10, generator=g)
    assert torch.equal(spatial_lowpass(x, 0.0), x)
    const = torch.full((1, 2, 3, 12, 10), 0.7)
    assert torch.allclose(spatial_lowpass(const, 1.0), const, atol=1e-6)
    ramp = torch.linspace(-1, 1, 10).expand(1, 1, 2, 12, 10).contiguous()
    inner = (slice(None),) * 4 + (slice(3, 7),)  # away from the reflected border
    assert torch.allclose(spatial_lowpass(ramp, 1.0)[inner], ramp[inner], atol=1e-5)
    checker = ((torch.arange(12)[:, None] + torch.arange(10)[None]) % 2 * 2 - 1.0).expand(1, 1, 1, 12, 10)
    assert spatial_lowpass(checker, 1.0).abs().max() < 0.01
    # frames are not mixed: a pulse in frame 1 leaves frames 0 and 2 at zero
    pulse = torch.zeros(1, 1, 3, 12, 10)
    pulse[0, 0, 1, 6, 5] = 1.0
    out = spatial_lowpass(pulse, 1.0)
    assert out[0, 0, 0].abs().max() == 0 and out[0, 0, 2].abs().max() == 0
    assert out[0, 0, 1, 6, 5] < 1.0 and torch.isclose(out.sum(), torch.tensor(1.0), atol=1e-5)
    with pytest.raises(ValueError, match="grad_lowpass"):
        DMDConfig(grad_lowpass=-0.5)


def test_reward_measures_garment_colour_and_sharpness():
    cfg = RewardConfig()
    h = w = 32
    garment = torch.ones(1, 3, h, w)  # white background
    garment[:, :, 8:24, 8:24] = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # a red shirt
    grey = torch.zeros(1, 3, 5, h, w)
    wearing = grey.clone()
    wearing[:, :, :, 10:20, 10:20] = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1, 1)
    assert colour_fidelity(wearing, garment, cfg).min() > 0.9
    assert colour_fidelity(grey, garment, cfg).max() < 0.1
    blurry = F.avg_pool3d(wearing, (1, 5, 5), stride=1, padding=(0, 2, 2))
    assert (sharpness(wearing, cfg) > sharpness(blurry, cfg)).all()
    # per latent frame: frame 0 alone, then groups of temporal_factor; then per chunk
    lat = per_latent(torch.arange(9.0)[None], 4)
    assert torch.allclose(lat, torch.tensor([[0.0, 2.5, 6.5]]))
    assert torch.allclose(per_chunk(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]), 2), torch.tensor([[1.5, 3.5, 5.0]]))
    clip = torch.cat([grey[:, :, :1], wearing[:, :, :4], grey[:, :, :4]], dim=2)  # 9 frames = 3 latents
    r = chunk_rewards(clip, garment, RewardConfig(kind="colour"), 4, 1)
    assert r[0, 1] > r[0, 2]


def test_export_writes_streaming_checkpoint(stages, tmp_path):
    root, _ = stages
    out = tmp_path / "ship"
    res = export.main(["--ckpt", str(root / "tf/final"), "--out", str(out), "--examples", "2", "--chunks", "3",
                       "--swap-at", "2", "--sheet", str(tmp_path / "s.png"), "--stream", "context_noise=100"])
    assert res["fps"] > 0 and 0 <= res["colour_fidelity_before_swap"] <= 1
    assert (out / "README.md").read_text().startswith("# fashionchameleon-tiny")
    assert (tmp_path / "s.png").is_file()
    eng = StreamingEngine.from_checkpoint(out)
    assert eng.preset.name == get_preset("test").name
    assert eng.stream_config.context_noise == 100.0


def test_tf_student_timesteps_draw_only_the_sampler_steps():
    from distill.train_tf import TFConfig, chunk_timesteps
    from fashionchameleon.sampling import FlowMatching

    fm = FlowMatching(1000, 5.0)
    steps = fm.few_step_timesteps((1000, 750, 500, 250), True)
    torch.manual_seed(0)
    t = chunk_timesteps(fm, 64, 8, 3, "cpu", steps)
    assert t.shape == (64, 8)
    assert torch.equal(t[:, 0], t[:, 2]) and torch.equal(t[:, 3], t[:, 5])  # one t per chunk
    assert set(t.unique().tolist()) == set(steps.tolist())  # all four steps, nothing else
    assert len(chunk_timesteps(fm, 64, 8, 3, "cpu").unique()) > 4  # default: the whole grid
    with pytest.raises(ValueError, match="timesteps"):
        TFConfig(timesteps="bogus")


def _tiny_clip(comp, clips: int, seed: int = 0):
    stream = comp.preset.stream
    z = comp.transformer.config.in_channels
    g = torch.Generator().manual_seed(seed)
    ref, gar = (torch.randn(clips, z, 1, 4, 4, generator=g) for _ in range(2))
    vid = torch.randn(clips, z, 2 * stream.chunk_frames, 4, 4, generator=g)
    return ref, gar, vid, comp.text_encoder(["walks forward"] * clips)


def test_self_history_replaces_a_fraction_with_causal_detached_x0():
    from distill.train_tf import self_history

    comp = build_components(ModelConfig(preset="test"))
    tr, fm, c = comp.transformer, comp.fm, comp.preset.stream.chunk_frames
    masks = TFMask(c, comp.preset.stream.cond_frames)
    ref, gar, vid, text = _tiny_clip(comp, 64)

    assert self_history(tr, fm, masks, ref, gar, vid, text, c, 0.0, (0.5, 0.5)) is vid
    out = self_history(tr, fm, masks, ref, gar, vid, text, c, 0.5, (0.25, 1.0), torch.Generator().manual_seed(1))
    assert not out.requires_grad and out.shape == vid.shape
    replaced = (out != vid).flatten(1).any(dim=1)
    assert 16 < int(replaced.sum()) < 48  # about half the clips, the others untouched bit for bit
    assert torch.equal(out[~replaced], vid[~replaced])

    # it is the model's one-step x0: at a vanishing sigma it gives the clip back
    near = self_history(tr, fm, masks, ref[:2], gar[:2], vid[:2], text[:2], c, 1.0, (1e-4, 1e-4))
    assert torch.allclose(near, vid[:2], atol=1e-2) and not torch.equal(near, vid[:2])

    # chunk 0's x0 sees only chunk 0 (its real history is empty): changing the last chunk leaves it alone
    later = vid[:4].clone()
    later[:, :, c:] += 1.0
    a = self_history(tr, fm, masks, ref[:4], gar[:4], vid[:4], text[:4], c, 1.0, (0.6, 0.6),
                     torch.Generator().manual_seed(2))
    b = self_history(tr, fm, masks, ref[:4], gar[:4], later, text[:4], c, 1.0, (0.6, 0.6),
                     torch.Generator().manual_seed(2))
    assert torch.allclose(a[:, :, :c], b[:, :, :c], atol=1e-5)
    assert not torch.allclose(a[:, :, c:], b[:, :, c:], atol=1e-3)


def test_tf_loss_history_fills_the_clean_half_only():
    from distill.train_tf import TFConfig, tf_loss

    comp = build_components(ModelConfig(preset="test"))
    tr, fm, c = comp.transformer, comp.fm, comp.preset.stream.chunk_frames
    masks = TFMask(c, comp.preset.stream.cond_frames)
    ref, gar, vid, text = _tiny_clip(comp, 2)
    noise = torch.randn_like(vid)
    t = torch.full((2, vid.shape[2]), 500.0)
    kw = dict(noise=noise, t_video=t, weighting="uniform")
    base = tf_loss(tr, fm, masks, ref, gar, vid, text, c, **kw)
    assert torch.equal(base, tf_loss(tr, fm, masks, ref, gar, vid, text, c, history=vid, **kw))
    assert not torch.equal(base, tf_loss(tr, fm, masks, ref, gar, vid, text, c, history=vid * 0.5, **kw))
    with pytest.raises(ValueError, match="self_history"):
        TFConfig(self_history=1.5)
    with pytest.raises(ValueError, match="self_history_sigma"):
        TFConfig(self_history_sigma=(0.8, 0.2))
    with pytest.raises(ValueError, match="self_history_sigma"):
        TFConfig(self_history_sigma=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="context_noise_max"):
        TFConfig(context_noise_max=-1)
    # context noise: the clean half is re-noised, so the loss moves; at t -> 0 it is the clean loss again
    ctx = tf_loss(tr, fm, masks, ref, gar, vid, text, c, context_t=torch.tensor([300.0, 300.0]), **kw)
    assert torch.isfinite(ctx) and not torch.equal(ctx, base)
    tiny = tf_loss(tr, fm, masks, ref, gar, vid, text, c, context_t=torch.tensor([1e-3, 1e-3]), **kw)
    assert torch.allclose(tiny, base, rtol=1e-4)


def test_make_stage_from_step_and_stream_overrides(stages, tmp_path, capsys):
    from distill import make_stage

    root, _ = stages
    weights = sorted((root / "tf").glob("step_*/ema_student_rank0.safetensors"))[-1]
    out = make_stage.main(["--weights", str(weights), "--like", str(root / "tf/final"), "--out", str(tmp_path / "s"),
                           "--stream", "context_noise=250"])
    eng = StreamingEngine.from_checkpoint(out)
    assert eng.stream_config.context_noise == 250.0
    # EMA weights of the last step == the stage's final (EMA) export
    a = load_stage(root / "tf/final").transformer.state_dict()
    b = eng.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    copy = make_stage.main(["--like", str(out), "--out", str(tmp_path / "c"), "--stream", "context_noise=0"])
    assert StreamingEngine.from_checkpoint(copy).stream_config.context_noise == 0.0
    for bad, msg in ((["--stream", "bogus=1"], "bogus"), (["--stream", "context_noise=5000"], "context_noise"),
                     (["--stream", "nokey"], "KEY=VALUE")):
        with pytest.raises(SystemExit):
            make_stage.main(["--like", str(out), "--out", str(tmp_path / "x")] + bad)
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_shipped_folder_fits_and_carries_the_critic_of_its_generator():
    from distill.train_dmd import DMDConfig, check_critic_shape, load_critic

    ship = ROOT / "assets/checkpoints/fashionchameleon-tiny"
    size = sum(f.stat().st_size for f in ship.rglob("*") if f.is_file())
    assert size <= 50 * 2**20, f"{ship} is {size / 2**20:.1f} MB (limit 50 MB)"
    critic = load_critic(ship / "critic")
    teacher = load_stage(ROOT / "assets/checkpoints/teacher_tiny").transformer
    check_critic_shape(teacher, critic, DMDConfig(critic_init=str(ship / "critic")))
    # a trained critic, not a copy of the teacher
    a, b = teacher.state_dict(), critic.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
