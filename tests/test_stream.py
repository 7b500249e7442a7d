"""Streaming session: determinism, chunk structure, swap timing and the cache state after each policy."""

import numpy as np
import pytest
import torch

from fashionchameleon.cache import Slot
from fashionchameleon.reschedule import POLICIES, SwapOptions, make_policy, parse_policy
from fashionchameleon.stream import CheckpointError, StreamingEngine


@pytest.fixture(scope="module")
def engine():
    return StreamingEngine.from_preset("test", seed=0)


def images(engine, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (engine.height, engine.width, 3), dtype=np.uint8) for _ in range(3)]


def run(engine, policy="disentangle", frames=40, swap_at=None, seed=7):
    ref, g1, g2 = images(engine, 0)
    s = engine.new_session(policy)
    out = []
    for fr in s.start(ref, g1, "walks forward", seed=seed, garment_id="g1", max_frames=frames):
        out.append(fr)
        if swap_at is not None and fr.index == swap_at:
            s.request_swap(g2, "g2")
    return s, out


def test_same_seed_identical_frames(engine):
    _, a = run(engine, seed=3)
    _, b = run(engine, seed=3)
    _, c = run(engine, seed=4)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_frames_and_timestamps(engine):
    s, out = run(engine, frames=30)
    cfg = engine.stream_config
    first_chunk = 1 + engine.preset.temporal_factor * (cfg.chunk_frames - 1)
    assert [f.index for f in out] == list(range(30))
    assert out[0].image.shape == (engine.height, engine.width, 3) and out[0].image.dtype == np.uint8
    assert sum(f.chunk_index == 0 for f in out) == first_chunk
    assert out[5].pts_s == pytest.approx(5 / engine.fps)
    assert s.stats()["ttff_s"] > 0


def test_swap_applies_at_next_chunk_boundary(engine):
    s, out = run(engine, frames=60, swap_at=20)
    requested_chunk = out[20].chunk_index
    swapped = [f for f in out if f.garment_id == "g2"]
    assert swapped and swapped[0].chunk_index == requested_chunk + 1
    assert all(f.swap_generation == 1 for f in swapped)
    assert s.stats()["last_swap_latency_s"] is not None


def test_swap_spam_coalesces_to_latest(engine):
    ref, g1, g2 = images(engine, 1)
    s = engine.new_session("withdraw")
    s.begin(ref, g1, "", seed=0, garment_id="g1")
    s.step()
    for i in range(50):
        s.request_swap(g2 if i % 2 else g1, f"g{i}")
    frames = s.step()
    assert frames[0].garment_id == "g49" and s.swap_generation == 1 and not s.swap_pending


def _prepared(engine, policy, chunks=6, options=None):
    ref, g1, g2 = images(engine, 2)
    s = engine.new_session(policy, options)
    s.begin(ref, g1, "waves", seed=1, garment_id="g1")
    for _ in range(chunks):
        s.step()
    return s, g2


def _k(s, slot):
    return s.cache.slot_kv(0, slot)[0].clone()


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_cache_state(engine, policy):
    s, g2 = _prepared(engine, policy)
    before = {sl: _k(s, sl) for sl in Slot}
    hist_before = s.cache.history_frames
    ref_latent = s.cond_latents[0]
    s.request_swap(g2, "g2")
    with torch.no_grad(), engine.lock:
        s._apply_pending_swap()
    after = {sl: _k(s, sl) for sl in Slot}
    assert not torch.equal(before[Slot.GARMENT], after[Slot.GARMENT]), "garment slot must be refreshed"
    st = s.cache.state()
    if policy == "refresh":
        assert st["window_frames"] + st["sink_frames"] == hist_before
        assert torch.equal(before[Slot.WINDOW], after[Slot.WINDOW]) and torch.equal(before[Slot.SINK], after[Slot.SINK])
        assert torch.equal(s.cond_latents[0], ref_latent)
    elif policy == "withdraw":
        assert s.cache.history_frames == 0 and torch.equal(s.cond_latents[0], ref_latent)
    elif policy in ("disentangle", "anchored"):  # anchored swaps as disentangle; its restore is tested below
        assert s.cache.history_frames == 0
        # the new reference is the last generated frame, re-encoded as a single image
        expect = engine.encode_image_tensor(s.last_pixels)
        assert torch.equal(s.cond_latents[0], expect) and not torch.equal(expect, ref_latent)
    elif policy == "recache":
        assert s.cache.history_frames == hist_before
        assert not torch.equal(before[Slot.WINDOW], after[Slot.WINDOW]), "history must be re-written"
        assert torch.equal(s.cond_latents[0], ref_latent)
    s.step()  # the stream continues


def test_disentangle_keep_sink_option(engine):
    s, g2 = _prepared(engine, "disentangle", options=SwapOptions(withdraw_sink=False))
    sink = _k(s, Slot.SINK)
    s.request_swap(g2)
    s.step()
    assert s.cache.sink_len == engine.stream_config.sink_frames
    assert torch.equal(sink, s.cache.slot_kv(0, Slot.SINK)[0])


@pytest.mark.parametrize("restore_after", [1, 2])
def test_anchored_restores_the_reference_with_history_kept(engine, restore_after):
    s, g2 = _prepared(engine, f"anchored:restore_after={restore_after}:restore_chunks=1", chunks=3)
    s.request_swap(g2, "g2")
    s.step()  # the swap chunk: disentangle's state (tested above)
    swapped_ref = _k(s, Slot.REFERENCE)
    for _ in range(restore_after - 1):
        s.step()
        assert torch.equal(_k(s, Slot.REFERENCE), swapped_ref) and s.restore_frames == []
    window, sink, hist = _k(s, Slot.WINDOW), _k(s, Slot.SINK), s.cache.history_frames
    assert hist > 0
    with torch.no_grad(), engine.lock:
        s._apply_pending_swap()  # the boundary where the restore fires
    assert s.restore_frames == [s.frame_index]
    assert s.cache.history_frames == hist
    assert torch.equal(_k(s, Slot.WINDOW), window) and torch.equal(_k(s, Slot.SINK), sink)
    assert torch.equal(s.cond_latents[0], s.reference_latent)
    # condition slots attend only to each other: the restored slot equals a fresh session's on (reference, g2)
    ref, _, _ = images(engine, 2)
    fresh = engine.new_session("disentangle")
    fresh.begin(ref, g2, "waves", seed=1)
    assert torch.allclose(_k(s, Slot.REFERENCE), _k(fresh, Slot.REFERENCE), atol=1e-6)
    assert torch.allclose(_k(s, Slot.GARMENT), _k(fresh, Slot.GARMENT), atol=1e-6)
    for _ in range(3):
        s.step()
    assert len(s.restore_frames) == 1, "the restore fires once per swap"
    s.request_swap(images(engine, 5)[0], "g3")
    for _ in range(restore_after + 1):
        s.step()
    assert len(s.restore_frames) == 2 and s.swap_generation == 2


def test_anchored_gradual_restore_moves_the_reference_in_steps(engine):
    s, g2 = _prepared(engine, "anchored:restore_after=1:restore_chunks=2", chunks=3)
    s.request_swap(g2, "g2")
    s.step()
    swap_ref = s.cond_latents[0].clone()
    s.step()  # its boundary moves the reference half-way
    assert torch.allclose(s.cond_latents[0], 0.5 * (swap_ref + s.reference_latent), atol=1e-6)
    s.step()  # and this one completes the restore
    assert torch.equal(s.cond_latents[0], s.reference_latent)
    assert len(s.restore_frames) == 2 and s.restore_frames[0] < s.restore_frames[1]


def test_anchored_without_swap_never_restores(engine):
    s, _ = _prepared(engine, "anchored:restore_after=1", chunks=4)
    assert s.restore_frames == []


def test_policy_spec_parsing():
    assert parse_policy("disentangle") == ("disentangle", SwapOptions())
    name, opt = parse_policy("anchored:restore_after=3:withdraw_sink=false")
    assert name == "anchored" and opt.restore_after == 3 and opt.withdraw_sink is False
    assert make_policy("anchored:restore_after=3").options.restore_after == 3
    for bad, msg in [("nope", "unknown swap policy"), ("anchored:colour=1", "bad policy option"),
                     ("anchored:restore_after", "bad policy option"), ("anchored:restore_after=x", "restore_after"),
                     ("anchored:restore_after=0", ">= 1"), ("anchored:withdraw_sink=maybe", "not a boolean")]:
        with pytest.raises(ValueError, match=msg):
            parse_policy(bad)


def test_long_run_memory_is_bounded(engine):
    s, _ = _prepared(engine, "disentangle", chunks=2)
    cap = s.cache.nbytes
    for _ in range(40):
        s.step()
    assert s.cache.nbytes == cap
    assert s.cache.stored_frames + engine.stream_config.chunk_frames <= engine.stream_config.cache_frames
    assert len(s.window_latents) <= engine.stream_config.window_frames


def test_close_frees_cache(engine):
    s, _ = _prepared(engine, "refresh", chunks=1)
    s.close()
    assert s.cache is None and s.stats()["kv_cache_bytes"] == 0
    with pytest.raises(RuntimeError):
        s.step()


def test_missing_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        StreamingEngine.from_checkpoint(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="preset.json"):
        StreamingEngine.from_checkpoint(tmp_path / "x")


def test_save_and_reload_checkpoint_streams_identically(engine, tmp_path):
    engine.save(tmp_path / "ckpt")
    e2 = StreamingEngine.from_checkpoint(tmp_path / "ckpt")
    _, a = run(engine, frames=12, seed=5)
    _, b = run(e2, frames=12, seed=5)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
