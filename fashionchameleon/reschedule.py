"""Training-free KV-cache rescheduling for a mid-stream garment swap (paper §4.3).

Every policy runs at a chunk boundary and leaves the cache in a documented state:

| policy        | condition slots                     | sink + window (history)           | next RoPE position |
|---------------|-------------------------------------|-----------------------------------|--------------------|
| `refresh`     | [reference, new garment] recomputed | kept                              | continues          |
| `withdraw`    | [reference, new garment] recomputed | dropped                           | restarts (option)  |
| `disentangle` | [re-encoded last frame, new garment]| dropped                           | restarts (option)  |
| `recache`     | [reference, new garment] recomputed | re-written from the stored clean latents under the new garment (LongLive) | unchanged |
| `anchored`    | as `disentangle`; `restore_after` chunks later the reference slot gets the original reference back | kept from then on | unchanged by the restore |

The condition pass runs [reference, garment] together because in training the two condition frames
attend to each other; recomputing both keeps their K/V consistent with what the student saw.

Open choices of the paper (§5.1) are options of `SwapOptions`; defaults are documented in docs/RESCHEDULING.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .stream import StreamingSession


@dataclass
class SwapOptions:
    # drop the pinned sink chunk too (Fig. 3 shows all history withdrawn); the next chunk becomes the new sink
    withdraw_sink: bool = True
    # positions after a withdraw in rope_mode="absolute": "restart" (fresh I2V session) or "continue"
    rope_after_swap: str = "restart"
    # which frame becomes the new reference: "last_pixel" (decode -> last RGB frame -> re-encode as an image,
    # the paper's fix) or "last_latent" (reuse the last latent frame directly: the "w/o disentangle" ablation)
    reencode: str = "last_pixel"
    # `anchored` only: chunks after a swap at which the original reference goes back into the reference slot
    restore_after: int = 1
    # `anchored` only: chunks over which the reference slot moves (latent lerp) from the swap frame to the original
    restore_chunks: int = 2

    def __post_init__(self):
        if self.rope_after_swap not in ("restart", "continue"):
            raise ValueError(f"rope_after_swap must be 'restart' or 'continue', got {self.rope_after_swap!r}")
        if self.reencode not in ("last_pixel", "last_latent"):
            raise ValueError(f"reencode must be 'last_pixel' or 'last_latent', got {self.reencode!r}")
        if not isinstance(self.restore_after, int) or self.restore_after < 1:
            raise ValueError(f"restore_after must be an int >= 1 (chunks), got {self.restore_after!r}")
        if not isinstance(self.restore_chunks, int) or self.restore_chunks < 1:
            raise ValueError(f"restore_chunks must be an int >= 1, got {self.restore_chunks!r}")


class SwapPolicy:
    name = "base"

    def __init__(self, options: SwapOptions | None = None):
        self.options = options or SwapOptions()

    def apply(self, session: "StreamingSession", garment_latent: torch.Tensor) -> None:
        raise NotImplementedError

    def due(self, session: "StreamingSession", chunks_since_swap: int) -> bool:
        """Whether `on_chunk` has work at this chunk boundary without a swap (cheap: asked every chunk)."""
        return False

    def on_chunk(self, session: "StreamingSession", chunks_since_swap: int) -> None:
        """Cache work between swaps, run only where `due` said so."""


class Refresh(SwapPolicy):
    """Garment KV refresh only: history still shows the old garment, so the swap rarely takes."""

    name = "refresh"

    def apply(self, session, garment_latent):
        session.prefill(session.cond_latents[0], garment_latent)


class Withdraw(SwapPolicy):
    """Refresh + historical KV withdraw: the swap takes, but motion restarts from the reference."""

    name = "withdraw"

    def apply(self, session, garment_latent):
        session.prefill(session.cond_latents[0], garment_latent)
        session.withdraw_history(keep_sink=not self.options.withdraw_sink,
                                 restart_positions=self.options.rope_after_swap == "restart")


class Disentangle(SwapPolicy):
    """The paper's full recipe: the last generated frame becomes the new reference, then withdraw."""

    name = "disentangle"

    def apply(self, session, garment_latent):
        if self.options.reencode == "last_pixel" and session.last_pixels is not None:
            new_ref = session.engine.encode_image_tensor(session.last_pixels)
        elif session.last_latent_frame is not None:
            new_ref = session.last_latent_frame
        else:  # nothing generated yet: behaves like refresh
            new_ref = session.cond_latents[0]
        session.prefill(new_ref, garment_latent)
        session.withdraw_history(keep_sink=not self.options.withdraw_sink,
                                 restart_positions=self.options.rope_after_swap == "restart")


class Anchored(Disentangle):
    """Disentangle for the swap itself, then the original reference back in its slot once the new garment is in the
    history. Each disentangle swap re-encodes a generated frame, so without the restore every defect of that frame
    (a blurred leg, a doubled head) becomes the identity of all later frames and compounds over swaps; after the
    restore the cache is in the state of an ordinary stream: the user's reference (mismatched garment, as in
    training), the new garment, and a history that already wears it."""

    name = "anchored"

    def apply(self, session, garment_latent):
        super().apply(session, garment_latent)
        self._swap_ref = session.cond_latents[0]

    def _step(self, chunks_since_swap: int) -> int:
        return chunks_since_swap - self.options.restore_after + 1  # 1 .. restore_chunks while restoring

    def due(self, session, chunks_since_swap):
        return session.swap_generation > 0 and 1 <= self._step(chunks_since_swap) <= self.options.restore_chunks

    def restore_reference(self, swap_ref: torch.Tensor, reference: torch.Tensor,
                          chunks_since_swap: int) -> torch.Tensor | None:
        """What the reference slot holds `chunks_since_swap` chunks after a swap, or None where it is unchanged
        (also used by the DMD swap rollouts, `distill.rollout.swap_rollout`)."""
        k = self._step(chunks_since_swap)
        if not 1 <= k <= self.options.restore_chunks:
            return None
        a = k / self.options.restore_chunks
        return reference if a == 1 else torch.lerp(swap_ref, reference, a)

    def on_chunk(self, session, chunks_since_swap):
        ref = self.restore_reference(self._swap_ref, session.reference_latent, chunks_since_swap)
        session.prefill(ref, session.cond_latents[1])


class Recache(SwapPolicy):
    """LongLive-style: re-run the stored clean history latents under the new garment."""

    name = "recache"

    def apply(self, session, garment_latent):
        history = session.history_latents()
        session.prefill(session.cond_latents[0], garment_latent)
        session.withdraw_history(keep_sink=False, restart_positions=True)
        session.recommit(history)


# what `serve`, `render`, `bench` and new sessions use (docs/RESCHEDULING.md: measured against `disentangle`)
DEFAULT_POLICY = "anchored"

POLICIES: dict[str, type[SwapPolicy]] = {p.name: p for p in (Refresh, Withdraw, Disentangle, Anchored, Recache)}


def parse_policy(spec: str) -> tuple[str, SwapOptions]:
    """`name[:field=value[:field=value...]]` -> (name, SwapOptions), e.g. "anchored:restore_after=1"."""
    name, *pairs = spec.split(":")
    if name not in POLICIES:
        raise ValueError(f"unknown swap policy {name!r}; choose one of {sorted(POLICIES)}")
    fields = {f.name for f in dataclasses.fields(SwapOptions)}
    kw: dict[str, object] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"bad policy option {pair!r} in {spec!r}; options are {sorted(fields)} (as field=value)")
        default = getattr(SwapOptions(), key)
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(f"{raw!r} is not a boolean")
                kw[key] = raw.lower() in ("1", "true", "yes")
            else:
                kw[key] = type(default)(raw)
        except ValueError as e:
            raise ValueError(f"bad value for {key} in {spec!r}: {e}") from e
    return name, SwapOptions(**kw)


def make_policy(spec: str, options: SwapOptions | None = None) -> SwapPolicy:
    """`spec` is a policy name, optionally with options (`parse_policy`); `options` replaces them."""
    name, parsed = parse_policy(spec)
    return POLICIES[name](options or parsed)
