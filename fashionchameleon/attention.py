"""Attention kernels and masks.

Masks are described per token by two integer labels and built either as a dense bool matrix
(CPU, tests) or as a FlexAttention `BlockMask` (GPU); both come from the same rule, so they agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "flex", "xformers")
_FLEX_COMPILED = None


def _flex_eager():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def _flex():
    """flex_attention compiled once (its eager form materialises the full score matrix)."""
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        _FLEX_COMPILED = torch.compile(_flex_eager(), dynamic=False)
    return _FLEX_COMPILED


def _is_block_mask(mask) -> bool:
    return mask is not None and type(mask).__name__ == "BlockMask"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None, backend: str = "sdpa") -> torch.Tensor:
    """`q [B, H, Lq, D]`, `k, v [B, H, Lk, D]`; `mask` is None, a dense bool `[Lq, Lk]` (True = attend), additive
    float logits broadcastable to `[Lq, Lk]` (the cache's garment key bias), or a BlockMask."""
    if _is_block_mask(mask):
        return _flex()(q, k, v, block_mask=mask) if q.is_cuda else _flex_eager()(q, k, v, block_mask=mask)
    if backend == "xformers" and q.is_cuda and mask is None:
        try:
            import xformers.ops as xops

            out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2)
        except (ImportError, NotImplementedError, RuntimeError):
            pass  # fall back to SDPA
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---------------------------------------------------------------------------- token labels
def block_labels(num_frames: int, tokens_per_frame: int, chunk_frames: int, cond_frames: int) -> torch.Tensor:
    """Block id per token: conditions are block 0, video chunk j is block j+1."""
    frame = torch.arange(num_frames)
    video = (frame - cond_frames).clamp(min=0)
    blk = torch.where(frame < cond_frames, torch.zeros_like(frame), video // chunk_frames + 1)
    if cond_frames == 0:
        blk = frame // chunk_frames
    return blk.repeat_interleave(tokens_per_frame)


def block_causal_rule(qb, kb):
    return kb <= qb


def teacher_forcing_rule(q_blk, q_noisy, k_blk, k_noisy):
    """Paper's in-context teacher forcing mask over [clean ++ noisy] (anchors §1.5)."""
    clean_q = ~q_noisy
    clean_k = ~k_noisy
    clean_rule = clean_q & clean_k & (k_blk <= q_blk)
    noisy_cond = q_noisy & (q_blk == 0) & k_noisy & (k_blk == 0)
    noisy_chunk = q_noisy & (q_blk > 0) & (
        (clean_k & (k_blk < q_blk)) | (k_noisy & (k_blk == q_blk))
    )
    return clean_rule | noisy_cond | noisy_chunk


def block_causal_mask(num_frames: int, tokens_per_frame: int, chunk_frames: int, cond_frames: int = 0,
                      device=None) -> torch.Tensor:
    """Dense `[L, L]` bool mask: a token sees its own block and all earlier ones."""
    blk = block_labels(num_frames, tokens_per_frame, chunk_frames, cond_frames).to(device)
    return block_causal_rule(blk[:, None], blk[None, :])


def teacher_forcing_labels(num_frames: int, tokens_per_frame: int, chunk_frames: int, cond_frames: int):
    """Labels for the sequence `[clean frames ++ noisy frames]` (each half `num_frames` frames)."""
    blk = block_labels(num_frames, tokens_per_frame, chunk_frames, cond_frames)
    blocks = torch.cat([blk, blk])
    noisy = torch.cat([torch.zeros_like(blk, dtype=torch.bool), torch.ones_like(blk, dtype=torch.bool)])
    return blocks, noisy


def teacher_forcing_mask(num_frames: int, tokens_per_frame: int, chunk_frames: int, cond_frames: int,
                         device=None) -> torch.Tensor:
    blocks, noisy = teacher_forcing_labels(num_frames, tokens_per_frame, chunk_frames, cond_frames)
    blocks, noisy = blocks.to(device), noisy.to(device)
    return teacher_forcing_rule(blocks[:, None], noisy[:, None], blocks[None, :], noisy[None, :])


def flex_block_mask(kind: str, num_frames: int, tokens_per_frame: int, chunk_frames: int, cond_frames: int,
                    device="cuda"):
    """The same masks as FlexAttention `BlockMask`s (`kind` = "block_causal" or "teacher_forcing")."""
    from torch.nn.attention.flex_attention import create_block_mask

    if kind == "block_causal":
        blk = block_labels(num_frames, tokens_per_frame, chunk_frames, cond_frames).to(device)

        def mask_mod(b, h, q, k):
            return block_causal_rule(blk[q], blk[k])

        n = blk.numel()
    elif kind == "teacher_forcing":
        blocks, noisy = teacher_forcing_labels(num_frames, tokens_per_frame, chunk_frames, cond_frames)
        blocks, noisy = blocks.to(device), noisy.to(device)

        def mask_mod(b, h, q, k):
            return teacher_forcing_rule(blocks[q], noisy[q], blocks[k], noisy[k])

        n = blocks.numel()
    else:
        raise ValueError(f"unknown mask kind {kind!r}")
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device)
