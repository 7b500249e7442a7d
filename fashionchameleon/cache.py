"""Typed KV caches for streaming generation.

Self-attention cache layout, per layer, in latent frames (each frame = `tokens_per_frame` tokens):

    [ cond (reference, garment) | sink (first chunk) | FIFO window | scratch (current chunk) ]

The buffer holds `cache_frames` (M) frames, so the current chunk always attends to at most M frames
(paper Eq. 7). Keys are stored post-RoPE in `[B, H, L, D]` so attention reads a contiguous prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch

from .configs import StreamConfig

CacheOp = str  # "cond" | "read" | "commit"
CACHE_OPS = ("cond", "read", "commit")


class Slot(str, Enum):
    REFERENCE = "reference"
    GARMENT = "garment"
    SINK = "sink"
    WINDOW = "window"


@dataclass
class CacheLayout:
    """Frame counts of each region; derived from a `StreamConfig`."""

    cond_frames: int
    sink_frames: int
    window_frames: int
    chunk_frames: int
    tokens_per_frame: int

    @classmethod
    def from_stream(cls, stream: StreamConfig, tokens_per_frame: int) -> "CacheLayout":
        return cls(stream.cond_frames, stream.sink_frames, stream.window_frames, stream.chunk_frames,
                   tokens_per_frame)

    @property
    def capacity_frames(self) -> int:
        return self.cond_frames + self.sink_frames + self.window_frames + self.chunk_frames


def check_key_scale_layer(scale: float, from_layer: int, num_layers: int) -> None:
    """A garment key scale must start at a layer the model has (else it would silently do nothing)."""
    if scale != 1.0 and not 0 <= from_layer < num_layers:
        raise ValueError(f"garment_key_scale_from_layer={from_layer} is outside the model's layers "
                         f"0..{num_layers - 1}")


class KVCache:
    """Per-layer self-attention K/V with pinned condition and sink slots and a FIFO window.

    Writes happen inside the model forward, layer by layer (`attend`), and the bookkeeping is
    advanced once per forward (`advance`). `rope_mode="rolling"` keeps every stored frame at the
    position equal to its layout index by re-rotating the window keys when old frames are evicted.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        layout: CacheLayout,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        rope_mode: str = "rolling",
        rerotate: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        garment_bias: float = 0.0,
        garment_key_scale: float = 1.0,
        garment_key_scale_from_layer: int = 0,
    ):
        if rope_mode == "rolling" and rerotate is None:
            raise ValueError("rope_mode='rolling' needs a rerotate function (the model's rope)")
        self.layout = layout
        self.num_layers = num_layers
        self.rope_mode = rope_mode
        self.rerotate = rerotate
        self.garment_bias = float(garment_bias)
        self.garment_key_scale = float(garment_key_scale)
        self.garment_key_scale_from_layer = int(garment_key_scale_from_layer)
        check_key_scale_layer(self.garment_key_scale, self.garment_key_scale_from_layer, num_layers)
        self._bias_cache: dict[tuple, torch.Tensor] = {}
        cap = layout.capacity_frames * layout.tokens_per_frame
        shape = (batch_size, num_heads, cap, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        self.cond_valid = False
        self.sink_len = 0  # frames
        self.window_len = 0  # frames
        self.next_abs_pos = self.layout.cond_frames  # used by rope_mode="absolute"
        self.evicted_frames = 0

    def withdraw(self, keep_sink: bool = False, restart_positions: bool = True) -> None:
        """Historical KV withdraw: drop the window (and the sink unless `keep_sink`)."""
        self.window_len = 0
        if not keep_sink:
            self.sink_len = 0
        if restart_positions:
            self.next_abs_pos = self.layout.cond_frames + self.sink_len

    @property
    def stored_frames(self) -> int:
        return (self.layout.cond_frames if self.cond_valid else 0) + self.sink_len + self.window_len

    @property
    def history_frames(self) -> int:
        return self.sink_len + self.window_len

    def slot_frames(self, slot: Slot | str) -> tuple[int, int]:
        """(start, stop) frame range of a slot in the buffer."""
        slot = Slot(slot)
        c = self.layout.cond_frames
        if slot is Slot.REFERENCE:
            return 0, min(1, c)
        if slot is Slot.GARMENT:
            return min(1, c), c
        if slot is Slot.SINK:
            return c, c + self.sink_len
        return c + self.sink_len, c + self.sink_len + self.window_len

    def slot_kv(self, layer: int, slot: Slot | str) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.slot_frames(slot)
        t = self.layout.tokens_per_frame
        return self.k[layer][:, :, a * t:b * t], self.v[layer][:, :, a * t:b * t]

    def next_positions(self, num_frames: int, op: CacheOp) -> torch.Tensor:
        """RoPE frame positions for the frames of the next forward."""
        if op == "cond":
            return torch.arange(num_frames)
        if self.rope_mode == "rolling":
            start = self.layout.cond_frames + self.history_frames
        else:
            start = self.next_abs_pos
        return torch.arange(start, start + num_frames)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    # ---------------------------------------------------------------- layer ops
    def attend(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, op: CacheOp):
        """Store the new `[B, H, n, D]` K/V of `layer` and return the K/V the queries attend to."""
        if op not in CACHE_OPS:
            raise ValueError(f"cache op must be one of {CACHE_OPS}, got {op!r}")
        t = self.layout.tokens_per_frame
        n = k_new.shape[2]
        if n % t:
            raise ValueError(f"{n} new tokens is not a whole number of {t}-token frames")
        kb, vb = self.k[layer], self.v[layer]
        if op == "cond":
            if n != self.layout.cond_frames * t:
                raise ValueError(f"cond pass needs {self.layout.cond_frames} frames, got {n // t}")
            kb[:, :, :n] = k_new
            vb[:, :, :n] = v_new
            if self.garment_key_scale != 1.0 and layer >= self.garment_key_scale_from_layer:
                # stored keys only: the condition pass itself attends as trained
                a, b = self.slot_frames(Slot.GARMENT)
                kb[:, :, a * t:b * t].mul_(self.garment_key_scale)
                return k_new.to(kb.dtype), v_new.to(vb.dtype)
            return kb[:, :, :n], vb[:, :, :n]
        if not self.cond_valid and self.layout.cond_frames:
            raise RuntimeError("prefill the reference and garment (cache op 'cond') before generating")
        frames = n // t
        if frames > self.layout.chunk_frames:
            raise ValueError(f"chunk of {frames} frames exceeds chunk_frames={self.layout.chunk_frames}")
        start = self.stored_frames * t
        if op == "read" and k_new.requires_grad:
            # training rollouts: keep the graph off the shared buffers (later in-place writes would break
            # backward); the cached prefix was produced without gradients, as in Self-Forcing
            return (torch.cat([kb[:, :, :start], k_new.to(kb.dtype)], dim=2),
                    torch.cat([vb[:, :, :start], v_new.to(vb.dtype)], dim=2))
        kb[:, :, start:start + n] = k_new
        vb[:, :, start:start + n] = v_new
        k_all, v_all = kb[:, :, :start + n], vb[:, :, :start + n]
        overflow = self._overflow(frames) if op == "commit" else 0
        if overflow > 0:
            # the slices above are views: clone before the eviction shift mutates the buffer
            k_all, v_all = k_all.clone(), v_all.clone()
            self._evict_layer(layer, frames, overflow)
        return k_all, v_all

    def key_bias(self, num_keys: int, op: CacheOp, dtype: torch.dtype, device) -> torch.Tensor | None:
        """Additive logits `[1, num_keys]` for the keys `attend` returned (garment slot = `garment_bias`), or None.

        Only the generated frames' queries ("read" / "commit") are biased: the condition pass stays as trained."""
        if not self.garment_bias or op == "cond":
            return None
        key = (num_keys, dtype, str(device))
        bias = self._bias_cache.get(key)
        if bias is None:  # the garment slot never moves, so one tensor per key length serves every layer and pass
            t = self.layout.tokens_per_frame
            a, b = self.slot_frames(Slot.GARMENT)
            bias = torch.zeros(1, num_keys, dtype=dtype, device=device)
            bias[:, a * t:b * t] = self.garment_bias
            self._bias_cache[key] = bias
        return bias

    def _overflow(self, new_frames: int) -> int:
        """Window frames a commit of `new_frames` must evict (0 while the chunk still fills the sink)."""
        if self.sink_len < self.layout.sink_frames:
            return 0
        return max(0, self.window_len + new_frames - self.layout.window_frames)

    def _evict_layer(self, layer: int, new_frames: int, overflow: int) -> None:
        lay = self.layout
        t = lay.tokens_per_frame
        w0 = (lay.cond_frames + self.sink_len) * t
        end = (self.stored_frames + new_frames) * t
        drop = overflow * t
        for buf in (self.k[layer], self.v[layer]):
            buf[:, :, w0:end - drop] = buf[:, :, w0 + drop:end].clone()
        if self.rope_mode == "rolling":
            seg = self.k[layer][:, :, w0:end - drop]
            seg.copy_(self.rerotate(seg, -overflow))

    def advance(self, op: CacheOp, num_frames: int) -> None:
        """Update the frame bookkeeping after all layers ran `op` on `num_frames` frames."""
        lay = self.layout
        if op == "cond":
            self.cond_valid = True
            return
        if op != "commit":
            return
        self.next_abs_pos += num_frames
        if self.sink_len < lay.sink_frames:
            self.sink_len += num_frames
            if self.sink_len > lay.sink_frames:
                raise ValueError("a chunk must not straddle the sink and the window")
            return
        self.window_len += num_frames
        overflow = self.window_len - lay.window_frames
        if overflow > 0:
            self.window_len -= overflow
            self.evicted_frames += overflow

    def state(self) -> dict:
        """A plain summary used by tests, the bench and the UI."""
        return {
            "cond_valid": self.cond_valid,
            "sink_frames": self.sink_len,
            "window_frames": self.window_len,
            "stored_frames": self.stored_frames,
            "evicted_frames": self.evicted_frames,
            "next_abs_pos": self.next_abs_pos,
            "bytes": self.nbytes,
        }


class CrossAttnCache:
    """Per-layer text K/V; computed once, reused every step, invalidated explicitly on a prompt change."""

    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.valid = False

    def invalidate(self) -> None:
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)
        self.valid = False

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)
