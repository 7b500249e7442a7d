"""KV cache: layout, FIFO eviction with pinned slots, rolling RoPE, byte accounting."""

import pytest
import torch

from fashionchameleon import CausalWanTransformer3DModel, get_preset
from fashionchameleon.cache import CacheLayout, KVCache, Slot
from fashionchameleon.configs import StreamConfig
from fashionchameleon.model import WanRope


def make(stream: StreamConfig, rope_mode="rolling"):
    torch.manual_seed(0)
    m = CausalWanTransformer3DModel(**get_preset("test").transformer).eval()
    tpf = m.tokens_per_frame(4, 4)
    return m, m.new_kv_cache(CacheLayout.from_stream(stream, tpf), rope_mode=rope_mode), tpf


def run_chunks(m, cache, n, chunk, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(1, 4, 16, generator=g)
    with torch.no_grad():
        m(torch.randn(1, 16, 2, 4, 4, generator=g), torch.zeros(1, 2), e, kv_cache=cache, cache_op="cond")
        for _ in range(n):
            m(torch.randn(1, 16, chunk, 4, 4, generator=g), torch.zeros(1, chunk), e, kv_cache=cache,
              cache_op="commit")
    return e


def test_layout_from_config_paper_numbers():
    s = StreamConfig()  # paper: M=23 incl. reference, garment and the first (sink) chunk
    assert (s.cond_frames, s.sink_frames, s.chunk_frames, s.cache_frames) == (2, 3, 3, 23)
    assert s.window_frames == 23 - 2 - 3 - 3
    lay = CacheLayout.from_stream(s, tokens_per_frame=7)
    assert lay.capacity_frames == 23


def test_eviction_keeps_pinned_slots_and_fifo_window():
    stream = StreamConfig(chunk_frames=2, cache_frames=2 + 2 + 4 + 2, sink_chunks=1)
    m, cache, tpf = make(stream)
    run_chunks(m, cache, n=1, chunk=2)
    pinned_k = [cache.slot_kv(layer, s)[0].clone() for layer in range(2) for s in (Slot.REFERENCE, Slot.GARMENT,
                                                                                    Slot.SINK)]
    run_chunks_more = 7
    g = torch.Generator().manual_seed(9)
    e = torch.randn(1, 4, 16, generator=g)
    window_inputs = []
    with torch.no_grad():
        for _ in range(run_chunks_more):
            x = torch.randn(1, 16, 2, 4, 4, generator=g)
            window_inputs.append(x)
            m(x, torch.zeros(1, 2), e, kv_cache=cache, cache_op="commit")
    st = cache.state()
    assert st["sink_frames"] == 2 and st["window_frames"] == 4
    assert st["evicted_frames"] == 2 * run_chunks_more - 4
    after = [cache.slot_kv(layer, s)[0] for layer in range(2) for s in (Slot.REFERENCE, Slot.GARMENT, Slot.SINK)]
    for a, b in zip(pinned_k, after):
        assert torch.equal(a, b), "pinned slots changed during eviction"
    # the current chunk always attends to at most M frames
    assert cache.stored_frames + stream.chunk_frames <= stream.cache_frames


def test_rolling_window_equals_fresh_computation_at_new_positions():
    """After eviction, the rolled window == the same frames committed fresh right after the sink."""
    stream = StreamConfig(chunk_frames=2, cond_frames=2, cache_frames=2 + 2 + 4 + 2, sink_chunks=1)
    m, cache, tpf = make(stream)
    g = torch.Generator().manual_seed(3)
    e = torch.randn(1, 4, 16, generator=g)
    cond = torch.randn(1, 16, 2, 4, 4, generator=g)
    chunks = [torch.randn(1, 16, 2, 4, 4, generator=g) for _ in range(4)]
    with torch.no_grad():
        m(cond, torch.zeros(1, 2), e, kv_cache=cache, cache_op="cond")
        for c in chunks:  # sink, w1, w2, w3 -> w1 evicted
            m(c, torch.zeros(1, 2), e, kv_cache=cache, cache_op="commit")
        k_rolled = cache.slot_kv(0, Slot.WINDOW)[0].clone()
        # layer-0 keys depend only on the frame's own input and its position
        ref = m.new_kv_cache(cache.layout)
        m(cond, torch.zeros(1, 2), e, kv_cache=ref, cache_op="cond")
        m(chunks[0], torch.zeros(1, 2), e, kv_cache=ref, cache_op="commit")
        m(chunks[2], torch.zeros(1, 2), e, kv_cache=ref, cache_op="commit")
        m(chunks[3], torch.zeros(1, 2), e, kv_cache=ref, cache_op="commit")
        k_fresh = ref.slot_kv(0, Slot.WINDOW)[0]
    assert (k_rolled - k_fresh).abs().max().item() < 1e-5
    assert cache.next_positions(2, "read").tolist() == [8, 9]  # current chunk at the end of the span


def test_absolute_mode_positions_keep_growing():
    stream = StreamConfig(chunk_frames=2, cache_frames=10, sink_chunks=1)
    m, cache, _ = make(stream, rope_mode="absolute")
    run_chunks(m, cache, n=6, chunk=2)
    assert cache.next_positions(2, "read").tolist() == [14, 15]
    assert cache.state()["window_frames"] == stream.window_frames


def test_withdraw_and_restart():
    stream = StreamConfig(chunk_frames=2, cache_frames=12, sink_chunks=1)
    m, cache, _ = make(stream, rope_mode="absolute")
    run_chunks(m, cache, n=3, chunk=2)
    cache.withdraw(keep_sink=True, restart_positions=False)
    assert cache.history_frames == 2 and cache.next_positions(2, "read").tolist() == [8, 9]
    cache.withdraw(keep_sink=False, restart_positions=True)
    assert cache.history_frames == 0 and cache.next_positions(2, "read").tolist() == [2, 3]


def test_bytes_and_shapes_come_from_config():
    p = get_preset("tiny")
    lay = CacheLayout.from_stream(p.stream, p.tokens_per_frame)
    t = p.transformer
    cache = KVCache(t["num_layers"], t["num_attention_heads"], t["attention_head_dim"], lay,
                    rope_mode="absolute")
    expected = 2 * t["num_layers"] * lay.capacity_frames * p.tokens_per_frame * t["num_attention_heads"] \
        * t["attention_head_dim"] * 4
    assert cache.nbytes == expected


def test_errors_are_clear():
    stream = StreamConfig(chunk_frames=2, cache_frames=10)
    m, cache, _ = make(stream)
    with pytest.raises(RuntimeError, match="prefill"):
        m(torch.randn(1, 16, 2, 4, 4), torch.zeros(1, 2), torch.randn(1, 4, 16), kv_cache=cache, cache_op="read")
    with pytest.raises(ValueError, match="cache_frames"):
        StreamConfig(chunk_frames=3, cache_frames=7)
    with pytest.raises(ValueError, match="context_noise"):
        StreamConfig(context_noise=1000.0)
    with pytest.raises(ValueError, match="rerotate"):
        KVCache(1, 1, 12, CacheLayout.from_stream(stream, 4), rope_mode="rolling")


def test_rope_rotation_is_exact_inverse():
    rope = WanRope(32)
    k = torch.randn(1, 2, 8, 32)
    back = rope.rotate_frames(rope.rotate_frames(k, 5), -5)
    assert (back - k).abs().max().item() < 1e-5
