"""Self-Forcing rollout of the causal student, step for step what `StreamingSession.step` does at inference.

Prefill `[ref, garment]` at t = 0 (cache op "cond"), then per chunk: fresh noise, the warped few-step schedule with
x0 re-noising (fresh noise between steps), and one context pass that commits the chunk's K/V (clean at t = 0,
or re-noised to `stream.context_noise`). With `exit_step = k` the chunk's output is the x0 prediction of step k
(Self-Forcing's stochastic exit); with `grad=True` only that forward keeps gradients, everything else (and the
cache) is built without them.
Noise is drawn on the CPU from `generator` in the same order as the session, so for batch 1 and
`exit_step = last` the output equals the session's latents.
"""

from __future__ import annotations

import torch

from fashionchameleon.cache import CacheLayout
from fashionchameleon.configs import StreamConfig
from fashionchameleon.sampling import FlowMatching


def rollout(transformer, fm: FlowMatching, stream: StreamConfig, ref: torch.Tensor, gar: torch.Tensor,
            text: torch.Tensor, num_chunks: int, exit_step: int | None = None, grad: bool = False,
            generator: torch.Generator | None = None, grad_last: int | None = None) -> list[torch.Tensor]:
    """Returns the `num_chunks` chunk latents `[B, z, chunk_frames, h, w]` (x0 at the exit step).

    `grad_last`: with `grad`, only the last `grad_last` chunks keep gradients (a long rollout scored on a window)."""
    steps = fm.few_step_timesteps(stream.denoising_steps, stream.warp_denoising_steps)
    last = len(steps) - 1
    exit_step = last if exit_step is None else int(exit_step)
    if not 0 <= exit_step <= last:
        raise ValueError(f"exit_step must be in [0, {last}], got {exit_step}")
    b, dev = ref.shape[0], ref.device
    dtype = next(transformer.parameters()).dtype
    h, w = ref.shape[-2:]
    layout = CacheLayout.from_stream(stream, transformer.tokens_per_frame(h, w))
    cache = transformer.new_kv_cache(layout, batch_size=b, dtype=dtype, device=dev, rope_mode=stream.rope_mode)
    shape = (b, transformer.config.in_channels, stream.chunk_frames, h, w)
    f = stream.chunk_frames

    def noise():
        return torch.randn(shape, generator=generator).to(dev, dtype)

    with torch.no_grad():
        cond = torch.cat([ref, gar], dim=2).to(dtype)
        transformer(cond, torch.zeros(b, cond.shape[2], device=dev), text, kv_cache=cache, cache_op="cond")
    outs = []
    first_grad = 0 if grad_last is None else num_chunks - grad_last
    for j in range(num_chunks):
        x = noise()
        x0 = x
        for i, t in enumerate(steps):
            with torch.set_grad_enabled(grad and j >= first_grad and i == exit_step):
                tt = torch.full((b, f), float(t), device=dev)
                v = transformer(x, tt, text, kv_cache=cache, cache_op="read").sample
                x0 = fm.x0_from_flow(x, v, t)
            if i == exit_step:
                break
            x = fm.add_noise(x0.detach(), noise(), steps[i + 1])
        with torch.no_grad():
            # the context pass writes this chunk's K/V for the next chunks (re-noised if stream.context_noise > 0)
            ctx, x_in = stream.context_noise, x0.detach()
            if ctx > 0:
                x_in = fm.add_noise(x_in, noise(), ctx)
            transformer(x_in, torch.full((b, f), float(ctx), device=dev), text, kv_cache=cache, cache_op="commit")
        outs.append(x0)
    return outs


def draw_exit_step(stream: StreamConfig, seed: int, step: int) -> int:
    """The exit step of one iteration: uniform over the schedule, the same on every rank (seeded by the step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return int(torch.randint(len(stream.denoising_steps), (1,), generator=g))
