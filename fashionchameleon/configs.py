"""Size presets: one registry for the transformer, VAE, text encoder and streaming settings.

Every shape in the project derives from a `Preset`; nothing downstream hard-codes token counts.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

FRAME_INTERPOLATION_MODES = ("none", "flow")


def check_interpolation(mode: str) -> str:
    if mode not in FRAME_INTERPOLATION_MODES:
        raise ValueError(f"frame_interpolation must be one of {FRAME_INTERPOLATION_MODES}, got {mode!r}")
    return mode


@dataclass
class StreamConfig:
    """Streaming / cache layout, in latent frames."""

    chunk_frames: int = 3  # latent frames generated per autoregressive step
    cond_frames: int = 2  # [reference, garment] at t=0
    cache_frames: int = 23  # M: attention span incl. conditions, sink and the current chunk (paper Eq. 7)
    sink_chunks: int = 1  # first generated chunk(s) pinned after the conditions
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    warp_denoising_steps: bool = True
    timestep_shift: float = 5.0
    num_train_timesteps: int = 1000
    fps: int = 24
    # "rolling": re-rotate window keys on eviction so positions stay inside the trained range;
    # "absolute": positions grow forever, as in the released FashionChameleon loop.
    rope_mode: str = "rolling"
    # Timestep at which a finished chunk is re-noised before its cache-write pass (Self-Forcing's `context_noise`;
    # 0 = the clean write of the paper). A noised history damps the stream's feedback on its own artefacts; the
    # student must be trained for it (distill.train_tf `tf.context_noise_max`).
    context_noise: float = 0.0
    # Additive attention logit on the garment slot's keys for every generated frame's queries (0 = the paper).
    # Training-free: log(k) weighs each garment token as k copies, pulling the torso towards the garment image
    # when the reference and the history still show the old garment (docs/RESCHEDULING.md).
    garment_attention_bias: float = 0.0
    # Multiplies the stored garment keys, i.e. the generated queries' logits on them (1 = the paper). Unlike the
    # additive bias it sharpens what each query already wants: tokens drawn to the garment take more of it, the
    # rest (background, legs) take less, so the garment's colour does not haze over the frame.
    garment_key_scale: float = 1.0
    # The scale applies from this transformer layer on (0 = every layer). Early layers lay out the body, later ones
    # draw its appearance; scaling only the later ones is meant to keep the pose across a swap (docs/RESCHEDULING.md).
    garment_key_scale_from_layer: int = 0
    # Display-side in-betweens between latent frames ("none" | "flow", docs/DESIGN.md). For VAEs that draw each
    # latent's frames almost still (the demo FastVAE); Wan's VAEs decode real motion and keep "none".
    frame_interpolation: str = "none"

    def __post_init__(self):
        self.denoising_steps = tuple(int(s) for s in self.denoising_steps)
        if self.chunk_frames < 1 or self.cond_frames < 0 or self.sink_chunks < 0:
            raise ValueError(f"invalid StreamConfig: {self}")
        if self.window_frames < 0:
            raise ValueError(
                f"cache_frames={self.cache_frames} too small for cond={self.cond_frames}, "
                f"sink={self.sink_frames} and a chunk of {self.chunk_frames} frames"
            )
        if self.rope_mode not in ("rolling", "absolute"):
            raise ValueError(f"rope_mode must be 'rolling' or 'absolute', got {self.rope_mode!r}")
        if not self.denoising_steps:
            raise ValueError("denoising_steps must not be empty")
        if not 0.0 <= self.context_noise < self.num_train_timesteps:
            raise ValueError(f"context_noise must be in [0, {self.num_train_timesteps}), got {self.context_noise}")
        if not math.isfinite(self.garment_attention_bias):
            raise ValueError(f"garment_attention_bias must be finite, got {self.garment_attention_bias}")
        if not (math.isfinite(self.garment_key_scale) and self.garment_key_scale > 0):
            raise ValueError(f"garment_key_scale must be a finite number > 0, got {self.garment_key_scale}")
        check_interpolation(self.frame_interpolation)
        if self.garment_key_scale_from_layer < 0:
            raise ValueError(f"garment_key_scale_from_layer must be >= 0, got {self.garment_key_scale_from_layer}")
        if (self.garment_attention_bias or self.garment_key_scale != 1.0) and self.cond_frames < 2:
            raise ValueError("garment_attention_bias / garment_key_scale need a garment slot (cond_frames >= 2)")

    @property
    def sink_frames(self) -> int:
        return self.sink_chunks * self.chunk_frames

    @property
    def window_frames(self) -> int:
        """History frames kept in the FIFO window (the current chunk takes the rest of M)."""
        return self.cache_frames - self.cond_frames - self.sink_frames - self.chunk_frames

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamConfig":
        return cls(**_checked(cls, d))


@dataclass
class Preset:
    name: str
    height: int
    width: int
    transformer: dict[str, Any]  # kwargs of CausalWanTransformer3DModel
    vae: dict[str, Any]  # {"backend": "fast"|"wan", **kwargs}
    text: dict[str, Any]  # {"kind": "learned"|"umt5", **kwargs}
    stream: StreamConfig = field(default_factory=StreamConfig)
    description: str = ""

    @property
    def spatial_factor(self) -> int:
        return int(self.vae.get("spatial_factor", self.vae.get("scale_factor_spatial", 8)))

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.get("temporal_factor", self.vae.get("scale_factor_temporal", 4)))

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.spatial_factor, self.width // self.spatial_factor

    @property
    def tokens_per_frame(self) -> int:
        _, ph, pw = self.transformer.get("patch_size", (1, 2, 2))
        h, w = self.latent_hw
        return (h // ph) * (w // pw)

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + self.temporal_factor * (latent_frames - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stream"]["denoising_steps"] = list(d["stream"]["denoising_steps"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preset":
        d = dict(_checked(cls, d))
        d["stream"] = StreamConfig.from_dict(d.get("stream", {}))
        return cls(**d)

    def with_stream(self, **overrides) -> "Preset":
        """A copy with `StreamConfig` fields replaced; validated like any preset (bad keys / values raise).
        A None value keeps the current setting (an unset command-line flag)."""
        d = self.to_dict()
        d["stream"] = {**d["stream"], **{k: v for k, v in overrides.items() if v is not None}}
        return Preset.from_dict(d)

    def flops_per_chunk(self) -> float:
        """Approximate forward FLOPs of one chunk step (matmuls only) at steady state."""
        t = self.transformer
        dim = t["num_attention_heads"] * t["attention_head_dim"]
        q = self.stream.chunk_frames * self.tokens_per_frame
        kv = self.stream.cache_frames * self.tokens_per_frame
        text_len = int(self.text.get("max_length", 512))
        per_layer = (
            2 * q * dim * dim * 4  # q, k, v, out projections
            + 2 * 2 * q * kv * dim  # QK^T and AV
            + 2 * q * dim * dim * 2 + 2 * 2 * q * text_len * dim  # cross-attn q/out + scores
            + 2 * 2 * q * dim * t["ffn_dim"]
        )
        return float(per_layer * t["num_layers"])


def _checked(cls, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}; allowed: {sorted(names)}")
    return d


def _wan_transformer(heads: int, head_dim: int, ffn: int, layers: int, channels: int, text_dim: int = 4096,
                     freq_dim: int = 256) -> dict[str, Any]:
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
        out_channels=channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    )


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="Shipped demo model: streams in real time on a 2-core CPU.",
        height=160,
        width=128,
        transformer=_wan_transformer(heads=4, head_dim=32, ffn=512, layers=6, channels=16, text_dim=64,
                                     freq_dim=64),
        vae=dict(backend="fast", z_dim=16, spatial_factor=8, temporal_factor=4),
        text=dict(kind="learned", vocab_size=512, max_length=8, dim=64),
        # M = cond 2 + sink 3 + window 3 + chunk 3: every cache position is covered by the 3-chunk training clips
        # (with the paper's M = 23 the demo model faded once the cache outgrew them; docs/TRAINING.md)
        # Timestep shift 1, not Wan's 5: shift grows with the token count, and a 20x16 latent grid is ~20x smaller
        # than Wan's at 480p. With 5, the 4 warped steps end at sigma 0.63 and most training draws are near-noise
        # (docs/TRAINING.md, run 3).
        # The FastVAE holds each latent's frames still, so the stream shows in-betweens (docs/DESIGN.md).
        stream=StreamConfig(cache_frames=11, fps=24, timestep_shift=1.0, frame_interpolation="flow"),
    ),
    "test": Preset(
        name="test",
        description="Micro model for unit tests.",
        height=32,
        width=32,
        transformer=_wan_transformer(heads=2, head_dim=12, ffn=32, layers=2, channels=16, text_dim=16,
                                     freq_dim=32),
        vae=dict(backend="fast", z_dim=16, spatial_factor=8, temporal_factor=4, base_channels=8),
        text=dict(kind="learned", vocab_size=64, max_length=4, dim=16),
        stream=StreamConfig(chunk_frames=2, cache_frames=10, fps=24),
    ),
    "wan2.1-1.3b": Preset(
        name="wan2.1-1.3b",
        description="Wan2.1-T2V-1.3B backbone at 832x480 (Self-Forcing scale).",
        height=480,
        width=832,
        transformer=_wan_transformer(heads=12, head_dim=128, ffn=8960, layers=30, channels=16),
        vae=dict(backend="wan", base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 temperal_downsample=[False, True, True], scale_factor_spatial=8, scale_factor_temporal=4),
        text=dict(kind="umt5", max_length=512, dim=4096),
        stream=StreamConfig(fps=16),
    ),
    "wan2.2-5b": Preset(
        name="wan2.2-5b",
        description="Wan2.2-TI2V-5B backbone at 1280x704 (the paper's setting).",
        height=1280,
        width=704,
        transformer=_wan_transformer(heads=24, head_dim=128, ffn=14336, layers=30, channels=48),
        # real latent mean/std come with the checkpoint's vae/config.json; identity stats for random weights
        vae=dict(backend="wan", base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4],
                 num_res_blocks=2, temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                 out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                 latents_mean=[0.0] * 48, latents_std=[1.0] * 48),
        text=dict(kind="umt5", max_length=512, dim=4096),
        stream=StreamConfig(fps=24),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def check_resolution(preset: Preset) -> None:
    """Raise unless the pixel size maps onto whole latent patches."""
    _, ph, pw = preset.transformer.get("patch_size", (1, 2, 2))
    step_h, step_w = preset.spatial_factor * ph, preset.spatial_factor * pw
    if preset.height % step_h or preset.width % step_w:
        raise ValueError(
            f"{preset.name}: {preset.height}x{preset.width} must be a multiple of {step_h}x{step_w} "
            f"(VAE factor {preset.spatial_factor} times patch {ph}x{pw})"
        )
