"""All tunables of the serving app in one place."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fashionchameleon.reschedule import DEFAULT_POLICY

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/fc-static"  # gradio owns /static


@dataclass(frozen=True)
class ImageLimits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 50_000_000  # header check, before any decode
    min_side: int = 32
    max_aspect: float = 4.0
    letterbox_rgb: tuple[int, int, int] = (255, 255, 255)
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass(frozen=True)
class AppConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    max_sessions: int = 2
    # RTCIceServer dicts ({"urls": ..., "username": ..., "credential": ...}); empty = host candidates only.
    ice_servers: tuple[dict, ...] = ()
    policy: str = DEFAULT_POLICY
    default_prompt: str = "walks forward"
    default_seed: int = 0
    # Frames handed from the worker to the track: capacity in chunks; the worker steps a session
    # only when a whole chunk fits, so it never blocks on a full queue. Every queued frame is swap latency the
    # viewer sees; 1.5 keeps half a chunk of lead (benchmarks/app_swap_latency.py: no underruns with 2 viewers
    # on the 2-core CPU, click-to-frame median 0.52-0.60 s against 0.73-0.85 s at 2; 1.25 underruns).
    queue_chunks: float = 1.5
    fallback_chunk_frames: int = 4  # used only if the engine does not say
    worker_idle_wait_s: float = 0.02
    # A session whose peer never connects is dropped after this.
    connect_timeout_s: float = 20.0
    stats_window_s: float = 2.0
    sent_log_frames: int = 2048  # per-session (pts, frame index) log for diagnostics
    placeholder_rgb: tuple[int, int, int] = (24, 24, 24)
    max_pending_schedule: int = 256
    # Recording (PyAV / libx264).
    record_codec: str = "libx264"
    record_pix_fmt: str = "yuv420p"
    record_crf: int = 20
    record_preset: str = "veryfast"
    record_queue_frames: int = 512
    record_dir: Path | None = None  # None -> a temp dir
    references_dir: Path = ASSETS_DIR / "references"
    garments_dir: Path = ASSETS_DIR / "garments"
    checkpoints_dir: Path = ASSETS_DIR / "checkpoints"
    max_uploads: int = 64
    ui_path: str = "/"
    stats_poll_ms: int = 500
    gallery_height_px: int = 200
    images: ImageLimits = field(default_factory=ImageLimits)
