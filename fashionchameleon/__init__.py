"""FashionChameleon: real-time garment-swap video streaming."""

from .configs import PRESETS, Preset, StreamConfig, get_preset
from .model import CausalWanTransformer3DModel

__version__ = "0.1.0"


def __getattr__(name):
    # the VAE and streaming modules import heavier pieces; load them on first use
    if name in ("WanVAE", "FastVAE", "load_vae"):
        from . import vae

        return getattr(vae, name)
    if name in ("StreamingEngine", "StreamingSession"):
        from . import stream

        return getattr(stream, name)
    raise AttributeError(name)


__all__ = ["CausalWanTransformer3DModel", "WanVAE", "FastVAE", "StreamingEngine", "StreamingSession", "PRESETS",
           "Preset", "StreamConfig", "get_preset", "load_vae"]
