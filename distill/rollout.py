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
from fashionchameleon.reschedule import Anchored, make_policy
from fashionchameleon.sampling import FlowMatching


def rollout(transformer, fm: FlowMatching, stream: StreamConfig, ref: torch.Tensor, gar: torch.Tensor,
            text: torch.Tensor, num_chunks: int, exit_step: int | None = None, grad: bool = False,
            generator: torch.Generator | None = None, grad_last: int | None = None,
            reprefill: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Returns the `num_chunks` chunk latents `[B, z, chunk_frames, h, w]` (x0 at the exit step).

    `grad_last`: with `grad`, only the last `grad_last` chunks keep gradients (a long rollout scored on a window).
    `reprefill`: chunk index -> reference latent written into the reference slot (with `gar`) before that chunk,
    history kept, as `StreamingSession.prefill` does for the `anchored` policy's restore."""
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
        if reprefill and j in reprefill:
            with torch.no_grad():
                cond = torch.cat([reprefill[j], gar], dim=2).to(dtype)
                transformer(cond, torch.zeros(b, cond.shape[2], device=dev), text, kv_cache=cache, cache_op="cond")
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


def swap_rollout(transformer, fm: FlowMatching, stream: StreamConfig, vae, ref: torch.Tensor, gar: torch.Tensor,
                 new_gar: torch.Tensor, text: torch.Tensor, num_chunks: int, exit_step: int | None = None,
                 grad: bool = False, generator: torch.Generator | None = None, grad_last: int | None = None,
                 policy: str = "anchored", pre_chunks: int = 1) -> list[torch.Tensor]:
    """A stream that swaps from `gar` to `new_gar` after `pre_chunks` chunks, step for step what `StreamingSession`
    does with the `disentangle` or `anchored` policy (default options), returning the `num_chunks` chunks after the
    swap. The pre-swap chunks are generated without gradients and decoded with the stream decoder; the swap
    re-encodes the last decoded frame as the reference, withdraws the history (sink included, positions restart:
    a fresh cache) and, for `anchored`, moves the reference slot back to `ref` over the following chunks."""
    pol = make_policy(policy)
    opts = pol.options
    if pol.name not in ("disentangle", "anchored"):
        raise ValueError(f"swap rollouts follow the disentangle or anchored policy, got {pol.name!r}")
    if not opts.withdraw_sink or opts.rope_after_swap != "restart":
        raise ValueError("swap rollouts need withdraw_sink=True and rope_after_swap=restart (a fresh cache)")
    if pre_chunks < 1:
        raise ValueError(f"pre_chunks must be >= 1, got {pre_chunks}")
    with torch.no_grad():
        pre = rollout(transformer, fm, stream, ref, gar, text, pre_chunks, generator=generator)
        if opts.reencode == "last_latent":
            new_ref = pre[-1][:, :, -1:]
        else:
            vae_dtype = next(vae.parameters()).dtype
            decoder = vae.stream_decoder()
            for chunk in pre:
                pix = decoder.decode(chunk.to(vae_dtype))
            new_ref = vae.encode_image(pix[:, :, -1].float().to(vae_dtype)).to(ref.dtype)
    reprefill = {}
    if isinstance(pol, Anchored):
        for j in range(1, num_chunks):
            r = pol.restore_reference(new_ref, ref, j)
            if r is not None:
                reprefill[j] = r
    return rollout(transformer, fm, stream, new_ref, new_gar, text, num_chunks, exit_step, grad, generator, grad_last,
                   reprefill)


def draw_exit_step(stream: StreamConfig, seed: int, step: int) -> int:
    """The exit step of one iteration: uniform over the schedule, the same on every rank (seeded by the step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return int(torch.randint(len(stream.denoising_steps), (1,), generator=g))
