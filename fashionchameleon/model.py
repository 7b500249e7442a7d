"""Causal Wan transformer: weight-compatible with diffusers' `WanTransformer3DModel`.

Same parameter names and config as diffusers (so a Wan2.1 / Wan2.2 transformer directory loads with
no missing or unexpected keys), plus what streaming needs and the stock model lacks:

- per-frame timesteps `[B, F]` (condition frames get t=0);
- explicit RoPE frame positions (offset, or one position per frame for teacher forcing);
- three attention modes: bidirectional (teacher), block-causal (training, dense or flex mask) and
  cached streaming through an explicit `KVCache`;
- a cross-attention (text) cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttention, WanTimeTextImageEmbedding

from .attention import attention, block_causal_mask, flex_block_mask
from .cache import CacheOp, CrossAttnCache, KVCache


class WanRope(nn.Module):
    """3-D RoPE of Wan, computed from explicit frame positions (no table, so positions are unbounded)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.h_dim = self.w_dim = 2 * (head_dim // 6)
        self.t_dim = head_dim - self.h_dim - self.w_dim
        self.theta = theta

    def _inv_freq(self, dim: int) -> torch.Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))

    def _angles(self, pos: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.outer(pos.to(torch.float64), self._inv_freq(dim))

    def freqs(self, frame_pos: torch.Tensor, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape `[1, 1, F*h*w, D/2]` (one value per rotated pair)."""
        f = frame_pos.numel()
        at = self._angles(frame_pos, self.t_dim)
        ah = self._angles(torch.arange(height), self.h_dim)
        aw = self._angles(torch.arange(width), self.w_dim)
        ang = torch.cat(
            [
                at[:, None, None].expand(f, height, width, -1),
                ah[None, :, None].expand(f, height, width, -1),
                aw[None, None, :].expand(f, height, width, -1),
            ],
            dim=-1,
        ).reshape(1, 1, f * height * width, -1)
        return ang.cos().float().to(device), ang.sin().float().to(device)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate interleaved pairs of `x [B, H, L, D]` (the convention of diffusers' Wan processor)."""
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
        return out.type_as(x)

    def rotate_frames(self, k: torch.Tensor, delta: int) -> torch.Tensor:
        """Shift the temporal position of post-RoPE keys `[B, H, L, D]` by `delta` frames."""
        half = k.shape[-1] // 2
        ang = torch.zeros(half, dtype=torch.float64)
        ang[: self.t_dim // 2] = self._angles(torch.tensor([float(delta)]), self.t_dim)[0]
        cos = ang.cos().float().to(k.device)
        sin = ang.sin().float().to(k.device)
        return self.apply(k, cos, sin)


class CausalWanBlock(nn.Module):
    """A Wan block with the same submodule names as diffusers' `WanTransformerBlock`."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, cross_attn_norm: bool, eps: float,
                 added_kv_proj_dim: int | None):
        super().__init__()
        head_dim = dim // num_heads
        self.num_heads = num_heads
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim=dim, heads=num_heads, dim_head=head_dim, eps=eps)
        self.attn2 = WanAttention(dim=dim, heads=num_heads, dim_head=head_dim, eps=eps,
                                  added_kv_proj_dim=added_kv_proj_dim, cross_attention_dim_head=head_dim)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(2, (self.num_heads, -1)).transpose(1, 2)  # [B, H, L, D]

    def forward(self, x, text, temb, rope, ctx: "_ForwardContext", layer: int):
        b, length, dim = x.shape
        f = temb.shape[1]
        # frame-wise modulation: temb is [B, F, 6, dim]
        mod = (self.scale_shift_table.unsqueeze(0) + temb.float()).unsqueeze(2)  # [B, F, 1, 6, dim]
        shift, scale, gate, c_shift, c_scale, c_gate = mod.unbind(3)

        def modulate(h, sc, sh):
            return (h.view(b, f, -1, dim) * (1 + sc) + sh).view(b, length, dim)

        def gated(res, y, g):
            return (res.float().view(b, f, -1, dim) + y.float().view(b, f, -1, dim) * g).view(b, length, dim)

        # 1. self-attention
        h = modulate(self.norm1(x.float()), scale, shift).type_as(x)
        a = self.attn1
        q = self._heads(a.norm_q(a.to_q(h)))
        k = self._heads(a.norm_k(a.to_k(h)))
        v = self._heads(a.to_v(h))
        q = WanRope.apply(q, *rope)
        k = WanRope.apply(k, *rope)
        mask = ctx.mask
        if ctx.kv_cache is not None:
            k, v = ctx.kv_cache.attend(layer, k, v, ctx.cache_op)
            mask = ctx.kv_cache.key_bias(k.shape[2], ctx.cache_op, q.dtype, q.device)
        o = attention(q, k, v, mask, backend=ctx.backend).transpose(1, 2).flatten(2).type_as(q)
        o = a.to_out[1](a.to_out[0](o))
        x = gated(x, o, gate).type_as(x)

        # 2. cross-attention (text), K/V optionally cached
        h = self.norm2(x.float()).type_as(x)
        c = self.attn2
        q = self._heads(c.norm_q(c.to_q(h)))
        cache = ctx.cross_cache
        if cache is not None and cache.valid:
            k, v = cache.k[layer], cache.v[layer]
        else:
            k = self._heads(c.norm_k(c.to_k(text)))
            v = self._heads(c.to_v(text))
            if cache is not None:
                cache.k[layer], cache.v[layer] = k, v
        o = attention(q, k, v, None, backend=ctx.backend).transpose(1, 2).flatten(2).type_as(q)
        x = x + c.to_out[1](c.to_out[0](o))

        # 3. feed-forward
        h = modulate(self.norm3(x.float()), c_scale, c_shift).type_as(x)
        x = gated(x, self.ffn(h), c_gate).type_as(x)
        return x


@dataclass
class _ForwardContext:
    mask: object
    kv_cache: KVCache | None
    cache_op: CacheOp
    cross_cache: CrossAttnCache | None
    backend: str


ATTENTION_MODES = ("bidirectional", "block_causal", "cached")
# "flow": the network outputs the flow (Wan). "sample": it outputs x0 and forward() returns the flow
# (x_t - x0) / max(sigma, sample_sigma_min), so every caller still sees a flow. A narrow network then need not
# carry the input noise through its blocks (JiT's x-prediction); see docs/TRAINING.md.
PREDICTION_TYPES = ("flow", "sample")


class CausalWanTransformer3DModel(ModelMixin, ConfigMixin):
    """Wan DiT for streaming garment swap. See the module docstring."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["CausalWanBlock"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _keys_to_ignore_on_load_unexpected = ["norm_added_q"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        prediction_type: str = "flow",
        sample_sigma_min: float = 0.05,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        if qk_norm != "rms_norm_across_heads":
            raise ValueError(f"only qk_norm='rms_norm_across_heads' is supported, got {qk_norm!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if not 0 < sample_sigma_min < 1:
            raise ValueError(f"sample_sigma_min must be in (0, 1), got {sample_sigma_min}")
        inner = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.rope = WanRope(attention_head_dim)
        self.patch_embedding = nn.Conv3d(in_channels, inner, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=inner, time_freq_dim=freq_dim, time_proj_dim=inner * 6, text_embed_dim=text_dim,
            image_embed_dim=image_dim, pos_embed_seq_len=pos_embed_seq_len,
        )
        self.blocks = nn.ModuleList(
            [CausalWanBlock(inner, ffn_dim, num_attention_heads, cross_attn_norm, eps, added_kv_proj_dim)
             for _ in range(num_layers)]
        )
        self.norm_out = FP32LayerNorm(inner, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner) / inner**0.5)
        self.gradient_checkpointing = False
        self.attn_backend = "sdpa"

    # ---------------------------------------------------------------- helpers
    @property
    def inner_dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    def set_attn_backend(self, name: str) -> None:
        """'sdpa' (default, any device), 'flex' (GPU block masks) or 'xformers' (optional [gpu] extra)."""
        from .attention import BACKENDS

        if name not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
        self.attn_backend = name

    def init_adaln_zero(self) -> "CausalWanTransformer3DModel":
        """DiT's adaLN-Zero start for from-scratch training: every block (and the output) starts as the identity
        (zero modulation and gates, zero cross-attention and output projections), so early steps are not spent
        undoing random residual branches. Wan's own init is PyTorch's default; pretrained weights never pass here."""
        with torch.no_grad():
            proj = self.condition_embedder.time_proj
            proj.weight.zero_()
            proj.bias.zero_()
            for block in self.blocks:
                block.scale_shift_table.zero_()
                block.attn2.to_out[0].weight.zero_()
                block.attn2.to_out[0].bias.zero_()
            self.scale_shift_table.zero_()
            self.proj_out.weight.zero_()
            self.proj_out.bias.zero_()
        return self

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, ph, pw = self.config.patch_size
        return (height // ph) * (width // pw)

    def new_kv_cache(self, layout, batch_size: int = 1, dtype=None, device=None, rope_mode: str = "rolling",
                     garment_bias: float = 0.0, garment_key_scale: float = 1.0,
                     garment_key_scale_from_layer: int = 0):
        p = next(self.parameters())
        return KVCache(
            num_layers=self.config.num_layers, num_heads=self.config.num_attention_heads,
            head_dim=self.config.attention_head_dim, layout=layout, batch_size=batch_size,
            dtype=dtype or p.dtype, device=device or p.device, rope_mode=rope_mode,
            rerotate=self.rope.rotate_frames, garment_bias=garment_bias, garment_key_scale=garment_key_scale,
            garment_key_scale_from_layer=garment_key_scale_from_layer,
        )

    def new_cross_cache(self) -> CrossAttnCache:
        return CrossAttnCache(self.config.num_layers)

    def _time_embed(self, timestep: torch.Tensor, dtype: torch.dtype):
        ce = self.condition_embedder
        b, f = timestep.shape
        t = ce.timesteps_proj(timestep.flatten())
        tdtype = next(iter(ce.time_embedder.parameters())).dtype
        if t.dtype != tdtype and tdtype != torch.int8:
            t = t.to(tdtype)
        temb = ce.time_embedder(t).to(dtype)
        proj = ce.time_proj(ce.act_fn(temb))
        return temb.view(b, f, -1), proj.view(b, f, 6, -1)

    def _flow_from_sample(self, x_t: torch.Tensor, x0: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Flow of an x0 prediction; `timestep` is per latent patch-frame `[B, F / p_t]`."""
        c = self.config
        sigma = (timestep.float() / c.num_train_timesteps).clamp(min=c.sample_sigma_min)
        sigma = sigma.repeat_interleave(c.patch_size[0], dim=1)[:, None, :, None, None]
        return ((x_t[:, : x0.shape[1]].float() - x0.float()) / sigma).to(x0.dtype)

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
        *,
        frame_offset: int = 0,
        frame_positions: torch.Tensor | None = None,
        attention_mode: str | None = None,
        chunk_frames: int | None = None,
        cond_frames: int = 0,
        attention_mask: object | None = None,
        kv_cache: KVCache | None = None,
        cache_op: CacheOp = "read",
        crossattn_cache: CrossAttnCache | None = None,
    ):
        """
        Args:
            hidden_states: `[B, C, F, H, W]` latent frames (conditions first, then video).
            timestep: `[B]` (one t for all frames), `[B, F]` (per frame) or `[B, F*tokens]` (per token,
                constant within a frame, the Wan2.2 TI2V convention).
            encoder_hidden_states: `[B, L, text_dim]`; may be None when `crossattn_cache` is valid.
            frame_offset / frame_positions: RoPE frame positions (default `offset + arange(F)`).
            attention_mode: "bidirectional", "block_causal" (needs `chunk_frames`; the first
                `cond_frames` frames form their own block) or "cached" (implied by `kv_cache`).
            attention_mask: explicit dense bool `[L, L]` (True = attend) or a flex `BlockMask`.
            kv_cache / cache_op: "cond" writes the condition slots, "read" attends to the cache without
                storing, "commit" attends and appends the frames to the sink / window.
        Returns:
            the flow prediction `[B, C_out, F, H, W]` (`.sample` when `return_dict`).
        """
        if encoder_hidden_states_image is not None:
            raise NotImplementedError("image-embedding (Wan2.1 I2V) conditioning is not used by FashionChameleon")
        b, _, f, hgt, wid = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        pf, ph, pw = f // p_t, hgt // p_h, wid // p_w
        tpf = ph * pw
        mode = attention_mode or ("cached" if kv_cache is not None else "bidirectional")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, got {mode!r}")
        if mode == "cached" and kv_cache is None:
            raise ValueError("attention_mode='cached' needs a kv_cache")

        if frame_positions is None:
            if kv_cache is not None:
                frame_positions = kv_cache.next_positions(pf, cache_op)
            else:
                frame_positions = torch.arange(pf) + frame_offset
        frame_positions = torch.as_tensor(frame_positions).flatten()
        if frame_positions.numel() != pf:
            raise ValueError(f"frame_positions has {frame_positions.numel()} entries for {pf} frames")
        rope = self.rope.freqs(frame_positions, ph, pw, hidden_states.device)

        x = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(b, pf)
        elif timestep.shape[1] == pf * tpf and tpf != 1:
            timestep = timestep[:, ::tpf]
        elif timestep.shape[1] != pf:
            raise ValueError(f"timestep shape {tuple(timestep.shape)} matches neither [B], [B,F] nor [B,F*tokens]")
        temb, tproj = self._time_embed(timestep, x.dtype if encoder_hidden_states is None
                                       else encoder_hidden_states.dtype)

        text = None
        if crossattn_cache is None or not crossattn_cache.valid:
            if encoder_hidden_states is None:
                raise ValueError("encoder_hidden_states is required unless crossattn_cache is valid")
            text = self.condition_embedder.text_embedder(encoder_hidden_states)

        mask = attention_mask
        if mask is None and mode == "block_causal":
            if chunk_frames is None:
                raise ValueError("block_causal attention needs chunk_frames")
            if self.attn_backend == "flex" and x.is_cuda:
                mask = flex_block_mask("block_causal", pf, tpf, chunk_frames, cond_frames, device=x.device)
            else:
                mask = block_causal_mask(pf, tpf, chunk_frames, cond_frames, device=x.device)
        ctx = _ForwardContext(mask=mask, kv_cache=kv_cache if mode == "cached" else None, cache_op=cache_op,
                              cross_cache=crossattn_cache, backend=self.attn_backend)

        for i, block in enumerate(self.blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing and ctx.kv_cache is None:
                x = self._gradient_checkpointing_func(block, x, text, tproj, rope, ctx, i)
            else:
                x = block(x, text, tproj, rope, ctx, i)
        if crossattn_cache is not None and text is not None:
            crossattn_cache.valid = True
        if ctx.kv_cache is not None:
            ctx.kv_cache.advance(cache_op, pf)

        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).unbind(2)  # [B, F, dim]
        dim, x_dtype = x.shape[-1], x.dtype
        x = (self.norm_out(x.float()).view(b, pf, tpf, dim) * (1 + scale[:, :, None]) + shift[:, :, None])
        x = self.proj_out(x.view(b, -1, dim).to(x_dtype))
        x = x.reshape(b, pf, ph, pw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if self.config.prediction_type == "sample":
            out = self._flow_from_sample(hidden_states, out, timestep)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
