"""Streaming engine and session: prefill [reference, garment] at t=0, then per chunk a few-step denoise,
one clean cache-write pass and a streaming VAE decode. Garment swaps apply at chunk boundaries.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .cache import CacheLayout, check_key_scale_layer
from .configs import Preset, check_resolution, get_preset
from .imageops import fit_crop, letterbox_white, to_tensor, to_uint8_frames
from .model import CausalWanTransformer3DModel
from .interpolate import make_interpolator
from .reschedule import DEFAULT_POLICY, SwapOptions, make_policy
from .sampling import FlowMatching
from .text import build_text_encoder
from .vae import build_vae, load_vae

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = Path(os.environ.get("FASHIONCHAMELEON_ASSETS", REPO_ROOT / "assets"))
DEFAULT_CHECKPOINT = ASSETS_DIR / "checkpoints" / "fashionchameleon-tiny"
PRESET_FILE = "preset.json"


class CheckpointError(FileNotFoundError):
    pass


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 uint8 RGB
    index: int
    pts_s: float
    garment_id: str | None
    chunk_index: int
    swap_generation: int  # how many swaps were applied before this frame


class StageTimer:
    """Wall-clock per-stage timing; synchronises CUDA so the numbers mean what they say."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.ms: dict[str, float] = {}

    def reset(self):
        self.ms = {}

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def stage(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                timer._sync()
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer._sync()
                timer.ms[name] = timer.ms.get(name, 0.0) + (time.perf_counter() - self.t0) * 1e3

        return _Ctx()


def cast_keep_fp32(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype` but keep the modules diffusers marks `_keep_in_fp32_modules` in float32."""
    if dtype == torch.float32:
        return model
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, p in model.named_parameters():
        fp32 = any(k in name.split(".") for k in keep)
        p.data = p.data.to(torch.float32 if fp32 else dtype)
    return model


class StreamingEngine:
    """Model + VAE + text encoder on one device; sessions share it (one at a time per step call)."""

    def __init__(self, preset: Preset, transformer: CausalWanTransformer3DModel, vae, text_encoder,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 checkpoint: str | None = None):
        check_resolution(preset)
        s = preset.stream  # fail at load, not when each session builds its cache
        check_key_scale_layer(s.garment_key_scale, s.garment_key_scale_from_layer, transformer.config.num_layers)
        self.preset = preset
        self.device = torch.device(device)
        self.dtype = dtype
        self.transformer = cast_keep_fp32(transformer.to(self.device), dtype).eval().requires_grad_(False)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.checkpoint = checkpoint
        self.fm = FlowMatching(preset.stream.num_train_timesteps, preset.stream.timestep_shift)
        self.lock = threading.Lock()  # serialises device work across sessions
        self._text_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str | Preset, device="cpu", dtype=torch.float32, random_weights: bool = True,
                    seed: int = 0) -> "StreamingEngine":
        if not random_weights:
            raise ValueError("from_preset builds random weights; use from_checkpoint for trained ones")
        preset = get_preset(name) if isinstance(name, str) else name
        torch.manual_seed(seed)
        # built on the target device: a 5B model initialised on the host takes minutes and 20 GB of RAM
        with torch.device(device):
            transformer = CausalWanTransformer3DModel(**preset.transformer)
            vae = build_vae(preset.vae)
        text = build_text_encoder(preset.text, random_weights=True)  # seeded on a CPU generator
        return cls(preset, transformer, vae, text, device=device, dtype=dtype, checkpoint=f"random:{preset.name}")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device="cpu",
                        dtype=torch.float32, stream: dict | None = None) -> "StreamingEngine":
        """`stream`: `StreamConfig` fields replacing the checkpoint's (e.g. {"garment_attention_bias": 1.4})."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if not path.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {path}")
        pfile = path / PRESET_FILE
        if not pfile.is_file():
            if (path / "model_index.json").is_file():
                raise CheckpointError(
                    f"{path} is a diffusers pipeline directory, not a FashionChameleon checkpoint: base Wan weights "
                    "know no garment conditioning. Train from it (model.pretrained in teacher/configs/wan2.2-5b.yaml, "
                    "then distill/) and stream the stage folder that writes, or bench speed with --random-weights")
            raise CheckpointError(f"{path} is not a FashionChameleon checkpoint (missing {PRESET_FILE})")
        try:
            preset = Preset.from_dict(json.loads(pfile.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{pfile}: bad preset: {e}") from e
        if stream:
            preset = preset.with_stream(**stream)
        for sub in ("transformer", "vae"):
            if not (path / sub).is_dir():
                raise CheckpointError(f"{path}: missing sub-folder {sub}/")
        transformer = CausalWanTransformer3DModel.from_pretrained(path / "transformer", use_safetensors=True)
        vae = load_vae(path / "vae")
        tdir = path / "text_encoder"
        text = build_text_encoder(preset.text, tdir if tdir.is_dir() else preset.text.get("path"))
        return cls(preset, transformer, vae, text, device=device, dtype=dtype, checkpoint=str(path))

    def save(self, path: str | os.PathLike, card: str | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / PRESET_FILE).write_text(json.dumps(self.preset.to_dict(), indent=2))
        self.transformer.save_pretrained(path / "transformer", safe_serialization=True)
        self.vae.save_pretrained(path / "vae")
        if hasattr(self.text_encoder, "save_pretrained"):
            self.text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
        if card:
            (path / "README.md").write_text(card)
        return path

    # ------------------------------------------------------------------ properties
    @property
    def fps(self) -> int:
        return self.preset.stream.fps

    @property
    def height(self) -> int:
        return self.preset.height

    @property
    def width(self) -> int:
        return self.preset.width

    @property
    def stream_config(self):
        return self.preset.stream

    # ------------------------------------------------------------------ conditions
    @torch.no_grad()
    def encode_text(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text_cache:
            if len(self._text_cache) > 64:
                self._text_cache.clear()
            self._text_cache[prompt] = self.text_encoder(prompt).to(self.device, self.dtype)
        return self._text_cache[prompt]

    @torch.no_grad()
    def encode_image_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """`[1, 3, H, W]` in [-1, 1] -> normalised latent `[1, z, 1, h, w]` in the model dtype."""
        vae_dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode_image(x.to(self.device, vae_dtype))
        return z.to(self.dtype)

    def encode_reference(self, image: np.ndarray) -> torch.Tensor:
        return self.encode_image_tensor(to_tensor(fit_crop(image, self.height, self.width)))

    def encode_garment(self, image: np.ndarray) -> torch.Tensor:
        return self.encode_image_tensor(to_tensor(letterbox_white(image, self.height, self.width)))

    def new_session(self, policy: str = DEFAULT_POLICY, options: SwapOptions | None = None) -> "StreamingSession":
        return StreamingSession(self, policy=policy, options=options)


class StreamingSession:
    """One user's stream. Thread-safe `request_swap`; `step()` generates one chunk."""

    def __init__(self, engine: StreamingEngine, policy: str = DEFAULT_POLICY, options: SwapOptions | None = None):
        self.engine = engine
        self.policy = make_policy(policy, options)
        self.timer = StageTimer(engine.device)
        self._swap_lock = threading.Lock()
        self._pending: tuple[np.ndarray, str | None, float] | None = None
        self.cache = None
        self.closed = False
        self.started = False

    # ------------------------------------------------------------------ lifecycle
    def begin(self, reference: np.ndarray, garment: np.ndarray, prompt: str = "", seed: int = 0,
              garment_id: str | None = None) -> None:
        e = self.engine
        cfg = e.stream_config
        self.t_start = time.perf_counter()
        self.timer.reset()
        self.generator = torch.Generator().manual_seed(int(seed))
        self.seed = int(seed)
        self.prompt = prompt
        h, w = e.height // e.preset.spatial_factor, e.width // e.preset.spatial_factor
        self.latent_shape = (1, e.transformer.config.in_channels, cfg.chunk_frames, h, w)
        layout = CacheLayout.from_stream(cfg, e.transformer.tokens_per_frame(h, w))
        self.cache = e.transformer.new_kv_cache(layout, dtype=e.dtype, device=e.device, rope_mode=cfg.rope_mode,
                                                garment_bias=cfg.garment_attention_bias,
                                                garment_key_scale=cfg.garment_key_scale,
                                                garment_key_scale_from_layer=cfg.garment_key_scale_from_layer)
        self.cross_cache = e.transformer.new_cross_cache()
        self.timesteps = e.fm.few_step_timesteps(cfg.denoising_steps, cfg.warp_denoising_steps)
        self.decoder = e.vae.stream_decoder()
        self.interpolator = make_interpolator(cfg.frame_interpolation, e.preset.temporal_factor)
        self.sink_latents: list[torch.Tensor] = []
        self.window_latents: deque[torch.Tensor] = deque(maxlen=max(cfg.window_frames, 1))
        self.last_pixels: torch.Tensor | None = None
        self.last_latent_frame: torch.Tensor | None = None
        self.frame_index = 0
        self.chunk_index = 0
        self.swap_generation = 0
        self.garment_id = garment_id
        self.ttff_s: float | None = None
        self.last_swap_latency_s: float | None = None
        self.swap_latencies: list[float] = []
        self._swap_t0: float | None = None
        self.chunk_ms: deque[float] = deque(maxlen=32)
        self.chunk_frames_out: deque[int] = deque(maxlen=32)
        self.stage_history: list[dict[str, float]] = []
        with e.lock, torch.no_grad(), self.timer.stage("encode"):
            self.text = e.encode_text(prompt)
            ref = e.encode_reference(reference)
            gar = e.encode_garment(garment)
        with e.lock, torch.no_grad(), self.timer.stage("prefill"):
            self.prefill(ref, gar)
        self.reference_latent = ref  # the user's reference; policies may put another frame in its slot
        self.chunks_since_swap = 0
        self.restore_frames: list[int] = []  # first frame generated after each policy cache change without a swap
        self.started = True

    def start(self, reference: np.ndarray, garment: np.ndarray, prompt: str = "", seed: int = 0,
              garment_id: str | None = None, max_frames: int | None = None) -> Iterator[Frame]:
        """Generator of frames; runs until `close()` or `max_frames`."""
        self.begin(reference, garment, prompt, seed, garment_id)
        while not self.closed and (max_frames is None or self.frame_index < max_frames):
            for fr in self.step():
                yield fr
                if max_frames is not None and fr.index + 1 >= max_frames:
                    return

    def close(self) -> None:
        """Free the KV cache and decoder state (idempotent)."""
        self.closed = True
        self.cache = None
        self.cross_cache = None
        self.decoder = None
        self.interpolator = None
        self.sink_latents = []
        self.window_latents = deque()

    # ------------------------------------------------------------------ swaps
    def request_swap(self, garment: np.ndarray, garment_id: str | None = None) -> None:
        """Queue a swap for the next chunk boundary; a newer request replaces an unapplied one."""
        with self._swap_lock:
            self._pending = (garment, garment_id, time.perf_counter())

    @property
    def swap_pending(self) -> bool:
        return self._pending is not None

    def set_prompt(self, prompt: str) -> None:
        with self.engine.lock:
            self.prompt = prompt
            self.text = self.engine.encode_text(prompt)
            self.cross_cache.invalidate()

    # ------------------------------------------------------------------ cache operations (used by policies)
    def prefill(self, ref_latent: torch.Tensor, garment_latent: torch.Tensor) -> None:
        """Condition pass at t=0: writes the reference and garment slots."""
        e = self.engine
        x = torch.cat([ref_latent, garment_latent], dim=2)
        t = torch.zeros(1, x.shape[2], device=e.device)
        e.transformer(x, t, self.text, kv_cache=self.cache, cache_op="cond", crossattn_cache=self.cross_cache)
        self.cond_latents = [ref_latent, garment_latent]

    def withdraw_history(self, keep_sink: bool, restart_positions: bool) -> None:
        self.cache.withdraw(keep_sink=keep_sink, restart_positions=restart_positions)
        if not keep_sink:
            self.sink_latents = []
        self.window_latents.clear()

    def history_latents(self) -> list[torch.Tensor]:
        return list(self.sink_latents) + list(self.window_latents)

    def recommit(self, frames: list[torch.Tensor]) -> None:
        """Re-write clean latent frames (each `[1, z, 1, h, w]`) through the cache, chunk by chunk."""
        n = self.engine.stream_config.chunk_frames
        for i in range(0, len(frames), n):
            self._commit(torch.cat(frames[i:i + n], dim=2))

    def _commit(self, x0: torch.Tensor) -> None:
        e = self.engine
        ctx = e.stream_config.context_noise
        t = torch.full((1, x0.shape[2]), float(ctx), device=e.device)
        x_in = x0
        if ctx > 0:
            eps = torch.randn(x0.shape, generator=self.generator).to(x0.device, x0.dtype)
            x_in = e.fm.add_noise(x0, eps, ctx)
        e.transformer(x_in, t, self.text, kv_cache=self.cache, cache_op="commit", crossattn_cache=self.cross_cache)
        frames = list(x0.split(1, dim=2))
        sink_room = e.stream_config.sink_frames - len(self.sink_latents)
        if sink_room > 0:
            self.sink_latents.extend(frames[:sink_room])
            frames = frames[sink_room:]
        self.window_latents.extend(frames)

    def _apply_pending_swap(self) -> None:
        with self._swap_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            self.chunks_since_swap += 1
            if self.policy.due(self, self.chunks_since_swap):  # no timer (a CUDA sync) on chunks without work
                with self.timer.stage("reschedule"):
                    self.policy.on_chunk(self, self.chunks_since_swap)
                self.restore_frames.append(self.frame_index)
            return
        garment, gid, t_req = pending
        e = self.engine
        with self.timer.stage("encode"):
            g = e.encode_garment(garment)
        with self.timer.stage("reschedule"):
            self.policy.apply(self, g)
        self.chunks_since_swap = 0
        self.garment_id = gid
        self.swap_generation += 1
        self._swap_t0 = t_req

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def step(self) -> list[Frame]:
        """Generate, cache and decode one chunk; returns its frames."""
        if not self.started or self.closed:
            raise RuntimeError("session is not running (call begin() first, or it was closed)")
        e = self.engine
        t0 = time.perf_counter()
        self.timer.reset()
        with e.lock:
            self._apply_pending_swap()
            noise = torch.randn(self.latent_shape, generator=self.generator).to(e.device, e.dtype)
            x = noise
            steps = self.timesteps
            f = self.latent_shape[2]
            x0 = x
            for i, t in enumerate(steps):
                with self.timer.stage(f"denoise_{i}"):
                    tt = torch.full((1, f), float(t), device=e.device)
                    v = e.transformer(x, tt, self.text, kv_cache=self.cache, cache_op="read",
                                      crossattn_cache=self.cross_cache).sample
                    x0 = e.fm.x0_from_flow(x, v, t)
                    if i + 1 < len(steps):
                        eps = torch.randn(self.latent_shape, generator=self.generator).to(e.device, e.dtype)
                        x = e.fm.add_noise(x0, eps, steps[i + 1])
            with self.timer.stage("cache_write"):
                self._commit(x0)
            with self.timer.stage("decode"):
                pix = self.decoder.decode(x0.to(next(e.vae.parameters()).dtype))
                self.last_pixels = pix[:, :, -1].float()
                self.last_latent_frame = x0[:, :, -1:]
                images = to_uint8_frames(pix)
        interp = self.interpolator  # host-side work, outside the device lock; close() may clear the attribute
        if interp is not None:
            with self.timer.stage("interpolate"):
                images = interp(images)
        now = time.perf_counter()
        fps = e.fps
        frames = []
        for img in images:
            frames.append(Frame(image=img, index=self.frame_index, pts_s=self.frame_index / fps,
                                garment_id=self.garment_id, chunk_index=self.chunk_index,
                                swap_generation=self.swap_generation))
            self.frame_index += 1
        if self.ttff_s is None:
            self.ttff_s = now - self.t_start
        if self._swap_t0 is not None:
            self.last_swap_latency_s = now - self._swap_t0
            self.swap_latencies.append(self.last_swap_latency_s)
            self._swap_t0 = None
        self.chunk_index += 1
        self.chunk_ms.append((now - t0) * 1e3)
        self.chunk_frames_out.append(len(frames))
        self.stage_history.append(dict(self.timer.ms))
        if len(self.stage_history) > 256:
            del self.stage_history[:128]
        return frames

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        ms = sum(self.chunk_ms)
        return {
            "fps": (sum(self.chunk_frames_out) / (ms / 1e3)) if ms > 0 else 0.0,
            "chunk_ms": (ms / len(self.chunk_ms)) if self.chunk_ms else 0.0,
            "ttff_s": self.ttff_s,
            "last_swap_latency_s": self.last_swap_latency_s,
            "frames": getattr(self, "frame_index", 0),
            "chunks": getattr(self, "chunk_index", 0),
            "garment_id": getattr(self, "garment_id", None),
            "swap_pending": self.swap_pending,
            "swap_generation": getattr(self, "swap_generation", 0),
            "kv_cache_bytes": self.cache.nbytes if self.cache is not None else 0,
            "policy": self.policy.name,
        }
