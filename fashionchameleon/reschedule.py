"""Training-free KV-cache rescheduling for a mid-stream garment swap (paper §4.3).

Every policy runs at a chunk boundary and leaves the cache in a documented state:

| policy        | condition slots                     | sink + window (history)           | next RoPE position |
|---------------|-------------------------------------|-----------------------------------|--------------------|
| `refresh`     | [reference, new garment] recomputed | kept                              | continues          |
| `withdraw`    | [reference, new garment] recomputed | dropped                           | restarts (option)  |
| `disentangle` | [re-encoded last frame, new garment]| dropped                           | restarts (option)  |
| `recache`     | [reference, new garment] recomputed | re-written from the stored clean latents under the new garment (LongLive) | unchanged |

The condition pass runs [reference, garment] together because in training the two condition frames
attend to each other; recomputing both keeps their K/V consistent with what the student saw.

Open choices of the paper (§5.1) are options of `SwapOptions`; defaults are documented in docs/RESCHEDULING.md.
"""

from __future__ import annotations

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

    def __post_init__(self):
        if self.rope_after_swap not in ("restart", "continue"):
            raise ValueError(f"rope_after_swap must be 'restart' or 'continue', got {self.rope_after_swap!r}")
        if self.reencode not in ("last_pixel", "last_latent"):
            raise ValueError(f"reencode must be 'last_pixel' or 'last_latent', got {self.reencode!r}")


class SwapPolicy:
    name = "base"

    def __init__(self, options: SwapOptions | None = None):
        self.options = options or SwapOptions()

    def apply(self, session: "StreamingSession", garment_latent: torch.Tensor) -> None:
        raise NotImplementedError


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


class Recache(SwapPolicy):
    """LongLive-style: re-run the stored clean history latents under the new garment."""

    name = "recache"

    def apply(self, session, garment_latent):
        history = session.history_latents()
        session.prefill(session.cond_latents[0], garment_latent)
        session.withdraw_history(keep_sink=False, restart_positions=True)
        session.recommit(history)


POLICIES: dict[str, type[SwapPolicy]] = {p.name: p for p in (Refresh, Withdraw, Disentangle, Recache)}


def make_policy(name: str, options: SwapOptions | None = None) -> SwapPolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown swap policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](options)
