"""Transformer: weight compatibility and numerical parity with diffusers, attention modes, RoPE."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from fashionchameleon import CausalWanTransformer3DModel
from fashionchameleon.attention import (block_causal_mask, flex_block_mask, teacher_forcing_mask)
from fashionchameleon.cache import CacheLayout
from fashionchameleon.configs import StreamConfig, get_preset
from fashionchameleon.model import WanRope

ATOL = 1e-4


def tiny_cfg(channels=16, text_dim=16, layers=2):
    cfg = dict(get_preset("test").transformer)
    cfg.update(in_channels=channels, out_channels=channels, text_dim=text_dim, num_layers=layers)
    return cfg


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**tiny_cfg()).eval()
    ours = CausalWanTransformer3DModel(**tiny_cfg()).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("layout", ["wan2.1", "wan2.2-ti2v"])
def test_from_pretrained_diffusers_dir_no_missing_keys(tmp_path, layout):
    channels = 16 if layout == "wan2.1" else 48  # TI2V-5B uses the z48 VAE
    torch.manual_seed(1)
    ref = WanTransformer3DModel(**tiny_cfg(channels=channels))
    ref.save_pretrained(tmp_path / "transformer")
    ours, info = CausalWanTransformer3DModel.from_pretrained(tmp_path / "transformer", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert info["mismatched_keys"] == [] and info["error_msgs"] == []
    sd_ref, sd_ours = ref.state_dict(), ours.state_dict()
    assert sd_ref.keys() == sd_ours.keys()
    assert all(torch.equal(sd_ref[k], sd_ours[k]) for k in sd_ref)
    # and back: our save_pretrained is a valid diffusers directory
    ours.save_pretrained(tmp_path / "ours")
    WanTransformer3DModel.from_pretrained(tmp_path / "ours")


def test_parity_with_diffusers_scalar_timestep(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 5, 8, 6, generator=g)
    t = torch.tensor([999, 321])
    e = torch.randn(2, 7, 16, generator=g)
    with torch.no_grad():
        a = ref(hidden_states=x, timestep=t, encoder_hidden_states=e).sample
        b = ours(hidden_states=x, timestep=t, encoder_hidden_states=e).sample
    assert a.shape == b.shape == x.shape
    assert (a - b).abs().max().item() <= ATOL


def test_parity_with_diffusers_per_token_timestep(pair):
    """Wan2.2 TI2V passes one timestep per token; ours takes the same tensor (or [B, F])."""
    ref, ours = pair
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 4, 4, 4, generator=g)
    per_frame = torch.tensor([[0.0, 0.0, 700.0, 700.0]])
    tpf = 4  # (4/2) * (4/2) tokens per frame
    per_token = per_frame.repeat_interleave(tpf, dim=1)
    e = torch.randn(1, 5, 16, generator=g)
    with torch.no_grad():
        a = ref(x, per_token, e).sample
        b = ours(x, per_token, e).sample
        c = ours(x, per_frame, e).sample
    assert (a - b).abs().max().item() <= ATOL
    assert (a - c).abs().max().item() <= ATOL


def test_frame_offset_equals_explicit_positions(pair):
    _, ours = pair
    x = torch.randn(1, 16, 3, 4, 4)
    e = torch.randn(1, 5, 16)
    with torch.no_grad():
        a = ours(x, torch.tensor([10]), e, frame_offset=7).sample
        b = ours(x, torch.tensor([10]), e, frame_positions=torch.tensor([7, 8, 9])).sample
        c = ours(x, torch.tensor([10]), e).sample
        d = ours(x, torch.tensor([10]), e, frame_positions=torch.tensor([0, 1, 5])).sample
    assert torch.allclose(a, b, atol=1e-6)
    # RoPE is relative: a uniform shift leaves full attention unchanged, a gap does not
    assert torch.allclose(a, c, atol=1e-4)
    assert not torch.allclose(c, d, atol=1e-3)


def _chunked_inputs(m, n_chunks: int, seed: int):
    """[2 condition frames + n_chunks chunks of 2] latents on a 4x6 grid, text, t=0 and tokens per frame."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2 + 2 * n_chunks, 4, 6, generator=g)
    e = torch.randn(1, 5, 16, generator=g)
    return x, e, torch.zeros(1, x.shape[2]), m.tokens_per_frame(4, 6)


def test_cached_chunks_equal_full_block_causal_forward(pair):
    """lucidrains-style: chunk-by-chunk with the KV cache == one block-causal forward."""
    _, m = pair
    stream = StreamConfig(chunk_frames=2, cond_frames=2, cache_frames=2 + 2 + 6 + 2, sink_chunks=1)
    n_chunks = 4
    x, e, t0, tpf = _chunked_inputs(m, n_chunks, seed=4)
    with torch.no_grad():
        full = m(x, t0, e, attention_mode="block_causal", chunk_frames=2, cond_frames=2).sample
        cache = m.new_kv_cache(CacheLayout.from_stream(stream, tpf))
        cross = m.new_cross_cache()
        outs = [m(x[:, :, :2], t0[:, :2], e, kv_cache=cache, cache_op="cond", crossattn_cache=cross).sample]
        for j in range(n_chunks):
            sl = slice(2 + 2 * j, 4 + 2 * j)
            # a denoising ("read") pass must not change what later chunks see
            m(torch.randn_like(x[:, :, sl]), torch.full((1, 2), 600.0), None, kv_cache=cache, cache_op="read",
              crossattn_cache=cross)
            outs.append(m(x[:, :, sl], t0[:, sl], None, kv_cache=cache, cache_op="commit",
                          crossattn_cache=cross).sample)
    cached = torch.cat(outs, dim=2)
    assert (cached - full).abs().max().item() <= ATOL
    assert cache.state()["stored_frames"] == 2 + 2 * n_chunks


def test_garment_attention_bias_cached_equals_biased_block_causal_forward(pair):
    """The cache's garment key bias == one block-causal forward whose float mask adds the bias to the garment
    columns of every generated frame's rows (condition rows unbiased); bias 0 leaves the cached path unmasked."""
    _, m = pair
    bias = 0.7
    stream = StreamConfig(chunk_frames=2, cond_frames=2, cache_frames=2 + 2 + 6 + 2, sink_chunks=1,
                          garment_attention_bias=bias)
    n_chunks = 3
    x, e, t0, tpf = _chunked_inputs(m, n_chunks, seed=5)
    allowed = block_causal_mask(x.shape[2], tpf, 2, 2)
    logits = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    logits[2 * tpf:, tpf:2 * tpf] += bias
    with torch.no_grad():
        full = m(x, t0, e, attention_mode="block_causal", chunk_frames=2, cond_frames=2,
                 attention_mask=logits).sample
        plain = m(x, t0, e, attention_mode="block_causal", chunk_frames=2, cond_frames=2).sample
        cache = m.new_kv_cache(CacheLayout.from_stream(stream, tpf), garment_bias=stream.garment_attention_bias)
        cross = m.new_cross_cache()
        outs = [m(x[:, :, :2], t0[:, :2], e, kv_cache=cache, cache_op="cond", crossattn_cache=cross).sample]
        for j in range(n_chunks):
            sl = slice(2 + 2 * j, 4 + 2 * j)
            outs.append(m(x[:, :, sl], t0[:, sl], None, kv_cache=cache, cache_op="commit",
                          crossattn_cache=cross).sample)
    cached = torch.cat(outs, dim=2)
    assert (cached - full).abs().max().item() <= ATOL
    assert (full - plain)[:, :, 2:].abs().max().item() > 1e-3  # the bias changes the generated frames ...
    assert (full - plain)[:, :, :2].abs().max().item() <= ATOL  # ... and not the condition pass
    assert cache.key_bias(10 * tpf, "cond", torch.float32, "cpu") is None
    assert m.new_kv_cache(CacheLayout.from_stream(stream, tpf)).key_bias(10 * tpf, "read", torch.float32,
                                                                         "cpu") is None
    with pytest.raises(ValueError, match="garment_attention_bias must be finite"):
        StreamConfig(garment_attention_bias=float("nan"))


def test_garment_key_scale_scales_only_the_stored_garment_keys(pair):
    """`garment_key_scale` multiplies the garment slot's stored keys once per condition pass (a refresh does not
    compound it); the condition pass and the reference/history keys are as trained; 1 is the plain cache."""
    _, m = pair
    scale = 2.5
    stream = StreamConfig(chunk_frames=2, cond_frames=2, cache_frames=2 + 2 + 6 + 2, sink_chunks=1,
                          garment_key_scale=scale)
    x, e, t0, tpf = _chunked_inputs(m, 2, seed=7)
    layout = CacheLayout.from_stream(stream, tpf)
    runs = {}
    with torch.no_grad():
        for s in (1.0, scale):
            cache = m.new_kv_cache(layout, garment_key_scale=s)
            cross = m.new_cross_cache()
            cond = m(x[:, :, :2], t0[:, :2], e, kv_cache=cache, cache_op="cond", crossattn_cache=cross).sample
            # a garment refresh: a second condition pass must overwrite, not rescale the scaled keys
            m(x[:, :, :2], t0[:, :2], None, kv_cache=cache, cache_op="cond", crossattn_cache=cross)
            gen = m(x[:, :, 2:4], t0[:, 2:4], None, kv_cache=cache, cache_op="commit", crossattn_cache=cross).sample
            runs[s] = (cond, gen, cache)
    (c1, g1, k1), (cs, gs, ks) = runs[1.0], runs[scale]
    assert torch.equal(c1, cs)  # the condition pass attends as trained
    assert (g1 - gs).abs().max().item() > 1e-3  # the generated frames see the scaled garment
    for layer in range(m.config.num_layers):
        for slot, factor in (("garment", scale), ("reference", 1.0)):
            (a, _), (b, _) = k1.slot_kv(layer, slot), ks.slot_kv(layer, slot)
            assert torch.allclose(b, a * factor, atol=1e-6), (layer, slot)
    # the committed chunk's first-layer keys come from its own input; deeper ones saw the scaled garment
    assert torch.equal(k1.slot_kv(0, "sink")[0], ks.slot_kv(0, "sink")[0])
    with pytest.raises(ValueError, match="garment_key_scale"):
        StreamConfig(garment_key_scale=0.0)


def test_garment_key_scale_from_layer_leaves_earlier_layers_as_trained(pair):
    """`garment_key_scale_from_layer` L: the garment keys of layers < L are stored unscaled, those of layers >= L
    scaled; L = 0 is the plain key scale; a negative L is refused."""
    _, m = pair
    scale, first = 2.5, 1
    stream = StreamConfig(chunk_frames=2, cond_frames=2, cache_frames=2 + 2 + 6 + 2, sink_chunks=1)
    x, e, t0, tpf = _chunked_inputs(m, 2, seed=7)
    layout = CacheLayout.from_stream(stream, tpf)
    caches = {}
    with torch.no_grad():
        for name, kw in (("plain", {}), ("all", {"garment_key_scale": scale}),
                         ("late", {"garment_key_scale": scale, "garment_key_scale_from_layer": first})):
            cache = m.new_kv_cache(layout, **kw)
            m(x[:, :, :2], t0[:, :2], e, kv_cache=cache, cache_op="cond", crossattn_cache=m.new_cross_cache())
            caches[name] = cache
    assert m.config.num_layers > first
    for layer in range(m.config.num_layers):
        plain = caches["plain"].slot_kv(layer, "garment")[0]
        late = caches["late"].slot_kv(layer, "garment")[0]
        assert torch.allclose(late, plain * (scale if layer >= first else 1.0), atol=1e-6), layer
        assert torch.allclose(caches["all"].slot_kv(layer, "garment")[0], plain * scale, atol=1e-6), layer
    with pytest.raises(ValueError, match="garment_key_scale_from_layer"):
        StreamConfig(garment_key_scale_from_layer=-1)
    with pytest.raises(ValueError, match="outside the model's layers"):
        m.new_kv_cache(layout, garment_key_scale=scale, garment_key_scale_from_layer=m.config.num_layers)


@pytest.mark.parametrize("context_t", [0.0, 150.0])
def test_noisy_chunk_with_cache_equals_teacher_forcing_mask(pair, context_t):
    """A noisy chunk denoised against the cache == its output under the in-context TF mask, also when the history
    is committed at a context-noise timestep (`StreamConfig.context_noise`) and the clean half has that t."""
    _, m = pair
    cond, chunk, n_chunks, hh, ww = 2, 2, 3, 4, 4
    f = cond + chunk * n_chunks
    tpf = m.tokens_per_frame(hh, ww)
    g = torch.Generator().manual_seed(5)
    clean = torch.randn(1, 16, f, hh, ww, generator=g)
    noisy = torch.randn(1, 16, f, hh, ww, generator=g)
    e = torch.randn(1, 5, 16, generator=g)
    t_noisy = torch.tensor([[0.0, 0.0] + sum([[float(100 + 200 * j)] * chunk for j in range(n_chunks)], [])])
    t_clean = torch.tensor([[0.0] * cond + [context_t] * (f - cond)])
    t = torch.cat([t_clean, t_noisy], dim=1)
    pos = torch.cat([torch.arange(f), torch.arange(f)])
    mask = teacher_forcing_mask(f, tpf, chunk, cond)
    with torch.no_grad():
        tf = m(torch.cat([clean, noisy], dim=2), t, e, frame_positions=pos, attention_mask=mask).sample[:, :, f:]
        stream = StreamConfig(chunk_frames=chunk, cond_frames=cond, cache_frames=f, sink_chunks=1)
        cache = m.new_kv_cache(CacheLayout.from_stream(stream, tpf))
        m(clean[:, :, :cond], torch.zeros(1, cond), e, kv_cache=cache, cache_op="cond")
        for j in range(n_chunks):
            sl = slice(cond + chunk * j, cond + chunk * (j + 1))
            out = m(noisy[:, :, sl], t_noisy[:, sl], e, kv_cache=cache, cache_op="read").sample
            assert (out - tf[:, :, sl]).abs().max().item() <= ATOL
            m(clean[:, :, sl], t_clean[:, sl], e, kv_cache=cache, cache_op="commit")


def test_teacher_forcing_mask_rules():
    m = teacher_forcing_mask(num_frames=2 + 4, tokens_per_frame=1, chunk_frames=2, cond_frames=2)
    n = 6
    clean = lambda i: i  # noqa: E731
    noisy = lambda i: n + i  # noqa: E731
    assert m[clean(0), clean(1)] and not m[clean(0), clean(2)]  # conditions see only themselves
    assert m[clean(4), clean(2)] and m[clean(4), clean(5)] and not m[clean(2), clean(4)]
    assert m[noisy(4), clean(0)] and m[noisy(4), clean(3)] and not m[noisy(4), clean(4)]
    assert m[noisy(4), noisy(5)] and not m[noisy(4), noisy(2)] and not m[noisy(4), noisy(0)]
    assert m[noisy(0), noisy(1)] and not m[noisy(0), clean(0)]
    assert not m[clean(2), noisy(2)]  # clean never sees noisy
    assert m.diagonal().all()


@pytest.mark.parametrize("kind", ["block_causal", "teacher_forcing"])
def test_flex_block_mask_matches_dense(kind):
    from torch.nn.attention.flex_attention import flex_attention

    f, tpf, chunk, cond = 2 + 6, 16, 3, 2
    dense = (block_causal_mask(f, tpf, chunk, cond) if kind == "block_causal"
             else teacher_forcing_mask(f, tpf, chunk, cond))
    n = dense.shape[0]
    bm = flex_block_mask(kind, f, tpf, chunk, cond, device="cpu")
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for _ in range(3))
    a = flex_attention(q, k, v, block_mask=bm)
    b = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    assert (a - b).abs().max().item() <= ATOL


def test_rope_rotation_shifts_positions():
    rope = WanRope(24)
    k = torch.randn(1, 2, 3 * 4, 24, dtype=torch.float64).float()
    cos, sin = rope.freqs(torch.tensor([5, 6, 7]), 2, 2, "cpu")
    cos2, sin2 = rope.freqs(torch.tensor([2, 3, 4]), 2, 2, "cpu")
    shifted = rope.rotate_frames(WanRope.apply(k, cos, sin), -3)
    assert (shifted - WanRope.apply(k, cos2, sin2)).abs().max().item() < 1e-5


def test_gradients_flow_in_block_causal_mode(pair):
    _, m = pair
    m = CausalWanTransformer3DModel(**tiny_cfg())
    m.enable_gradient_checkpointing()
    x = torch.randn(1, 16, 4, 4, 4, requires_grad=True)
    out = m(x, torch.tensor([[0.0, 0.0, 500.0, 500.0]]), torch.randn(1, 5, 16), attention_mode="block_causal",
            chunk_frames=2, cond_frames=2).sample
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.blocks[0].attn1.parameters())


def _sample_twin(flow_model, **extra):
    """The same weights with `prediction_type='sample'`: the raw network output is read as x0."""
    cfg = {**dict(flow_model.config), "prediction_type": "sample", **extra}
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    twin = CausalWanTransformer3DModel(**cfg).eval()
    twin.load_state_dict(flow_model.state_dict(), strict=True)
    return twin


def test_sample_prediction_returns_the_flow_of_its_x0(pair):
    """x-prediction: forward() returns (x_t - x0) / max(sigma, sigma_min), per frame, so callers see a flow."""
    _, flow = pair
    twin = _sample_twin(flow, sample_sigma_min=0.1)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 16, 4, 4, 6, generator=g)
    t = torch.tensor([[0.0, 0.0, 950.0, 950.0], [0.0, 0.0, 40.0, 40.0]])  # conds at t=0, 40 is below the clip
    e = torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        x0 = flow(x, t, e).sample
        v = twin(x, t, e).sample
    sigma = (t / 1000).clamp(min=0.1)[:, None, :, None, None]
    assert torch.allclose(v, (x - x0) / sigma, atol=1e-4)
    # the x0 the samplers recover from that flow is the network's output wherever sigma is above the clip
    assert torch.allclose((x - 0.95 * v)[0, :, 2:], x0[0, :, 2:], atol=1e-4)


def test_sample_prediction_cached_equals_block_causal_and_round_trips(pair, tmp_path):
    _, flow = pair
    twin = _sample_twin(flow)
    stream = StreamConfig(chunk_frames=2, cond_frames=2, cache_frames=10, sink_chunks=1)
    x, e, _, tpf = _chunked_inputs(twin, 2, seed=12)
    t = torch.tensor([[0.0, 0.0, 500.0, 500.0, 250.0, 250.0]])
    with torch.no_grad():
        full = twin(x, t, e, attention_mode="block_causal", chunk_frames=2, cond_frames=2).sample
        cache = twin.new_kv_cache(CacheLayout.from_stream(stream, tpf))
        cross = twin.new_cross_cache()
        outs = [twin(x[:, :, :2], t[:, :2], e, kv_cache=cache, cache_op="cond", crossattn_cache=cross).sample]
        for sl in (slice(2, 4), slice(4, 6)):
            outs.append(twin(x[:, :, sl], t[:, sl], None, kv_cache=cache, cache_op="commit",
                             crossattn_cache=cross).sample)
    assert (torch.cat(outs, dim=2) - full)[:, :, 2:].abs().max().item() <= 1e-3
    twin.save_pretrained(tmp_path / "t")
    back = CausalWanTransformer3DModel.from_pretrained(tmp_path / "t").eval()
    assert back.config.prediction_type == "sample"
    with torch.no_grad():
        assert torch.allclose(back(x, t, e).sample, twin(x, t, e).sample, atol=1e-5)


def test_bad_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        CausalWanTransformer3DModel(**{**tiny_cfg(), "prediction_type": "epsilon"})
    with pytest.raises(ValueError, match="sample_sigma_min"):
        CausalWanTransformer3DModel(**{**tiny_cfg(), "prediction_type": "sample", "sample_sigma_min": 0.0})
