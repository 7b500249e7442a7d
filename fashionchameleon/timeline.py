"""Swap timeline format shared by the live app (Record / Timeline) and `fashionchameleon render`.

JSON layout::

    {"fps": 16, "frames": 96, "seed": 0, "prompt": "walks forward", "reference": "ref_a",
     "policy": "disentangle", "checkpoint": "assets/checkpoints/demo",
     "swaps": [{"frame": 0, "time_s": 0.0, "garment": "red_dress"},
               {"frame": 32, "time_s": 2.0, "garment": "blue_shirt"}]}

- `frame` is the global engine frame index (0 = first generated frame) at which the garment is
  requested; `time_s = frame / fps` is informative (`frame` wins when both are given).
- A swap at frame 0 names the starting garment.
- `reference` / `garment` are a bundled file stem (`assets/{references,garments}/<stem>.png`), a path
  to an image file, or an upload id (valid only while the server that issued it is running).
- Replay rule (live and offline alike): call `session.request_swap` right before pulling frame
  `swap.frame` from the generator; the engine applies it at its next chunk boundary. Several swaps
  due at the same point coalesce to the latest. `SwapScheduler` implements this rule.
- Unknown keys are kept in `extra` and written back.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
def portable_path(path: str | None) -> str | None:
    """A path as written into shared JSON: relative to the working directory when it lies inside it, so a
    timeline or bench result made in a checkout does not carry that machine's absolute path."""
    if not path or ":" in path.split("/")[0]:  # None, "", or a pseudo-path such as "random:tiny"
        return path
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path


_KNOWN = ("fps", "frames", "seed", "prompt", "reference", "policy", "checkpoint", "swaps")
# "2 -> red", "2s: red", "at 2.5 s -> red", "frame 40 -> red"
_LINE = re.compile(
    r"^\s*(?:at\s+)?(?P<frame_kw>frame\s+)?(?P<t>\d+(?:\.\d+)?)\s*(?P<unit>s|sec|f)?\s*(?:->|:|=>|,)\s*(?P<g>\S.*?)\s*$",
    re.IGNORECASE,
)


class TimelineError(ValueError):
    pass


@dataclass(frozen=True)
class Swap:
    frame: int
    garment: str

    def to_dict(self, fps: float) -> dict:
        return {"frame": int(self.frame), "time_s": round(self.frame / fps, 4), "garment": self.garment}


@dataclass
class Timeline:
    fps: float
    frames: int = 0
    seed: int = 0
    prompt: str = ""
    reference: str | None = None
    policy: str | None = None
    checkpoint: str | None = None
    swaps: list[Swap] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.fps or self.fps <= 0:
            raise TimelineError("fps must be > 0")
        self.swaps = sorted(self.swaps, key=lambda s: s.frame)
        for s in self.swaps:
            if s.frame < 0:
                raise TimelineError(f"negative frame {s.frame}")
            if not s.garment:
                raise TimelineError("swap without garment")

    @property
    def start_garment(self) -> str | None:
        return self.swaps[0].garment if self.swaps and self.swaps[0].frame == 0 else None

    def garment_at(self, frame: int) -> str | None:
        """Garment requested most recently at or before `frame`."""
        g = None
        for s in self.swaps:
            if s.frame <= frame:
                g = s.garment
        return g

    def to_dict(self) -> dict:
        d = {
            "fps": self.fps, "frames": int(self.frames), "seed": int(self.seed), "prompt": self.prompt,
            "reference": self.reference, "policy": self.policy,
            "checkpoint": portable_path(self.checkpoint), "swaps": [s.to_dict(self.fps) for s in self.swaps],
        }
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Timeline":
        if not isinstance(d, dict):
            raise TimelineError("timeline must be a JSON object")
        try:
            fps = float(d["fps"])
        except (KeyError, TypeError, ValueError):
            raise TimelineError("timeline needs a numeric 'fps'") from None
        swaps = []
        for i, s in enumerate(d.get("swaps") or []):
            if not isinstance(s, dict) or "garment" not in s:
                raise TimelineError(f"swap #{i} needs a 'garment'")
            if "frame" in s and s["frame"] is not None:
                frame = int(s["frame"])
            elif "time_s" in s:
                frame = int(round(float(s["time_s"]) * fps))
            else:
                raise TimelineError(f"swap #{i} needs 'frame' or 'time_s'")
            swaps.append(Swap(frame, str(s["garment"])))
        return cls(
            fps=fps, frames=int(d.get("frames") or 0), seed=int(d.get("seed") or 0), prompt=str(d.get("prompt") or ""),
            reference=d.get("reference"), policy=d.get("policy"), checkpoint=d.get("checkpoint"), swaps=swaps,
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )

    @classmethod
    def from_json(cls, text: str) -> "Timeline":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise TimelineError(f"invalid JSON: {e}") from None


def load_timeline(path: str | Path) -> Timeline:
    return Timeline.from_json(Path(path).read_text())


def save_timeline(timeline: Timeline, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(timeline.to_dict(), indent=2) + "\n")
    return path


def parse_schedule(text: str, fps: float) -> list[Swap]:
    """Parse the UI's schedule box: one `<seconds> -> <garment>` per line (`frame N -> g` or `Nf -> g` for frames)."""
    swaps = []
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise TimelineError(f"line {n}: expected '<seconds> -> <garment>', got {line.strip()!r}")
        t = float(m["t"])
        in_frames = bool(m["frame_kw"]) or (m["unit"] or "").lower() == "f"
        swaps.append(Swap(int(t) if in_frames else int(round(t * fps)), m["g"]))
    return sorted(swaps, key=lambda s: s.frame)


def format_schedule(swaps: list[Swap], fps: float) -> str:
    return "\n".join(f"{s.frame / fps:g} -> {s.garment}" for s in swaps)


def resolve_image(ref: str, bundled_dir: str | Path | None = None) -> Path | None:
    """A bundled stem or an image path -> file path (None if not found). Upload ids are resolved by the server."""
    p = Path(ref)
    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
        return p
    if bundled_dir is not None:
        for suf in IMAGE_SUFFIXES:
            cand = Path(bundled_dir) / f"{ref}{suf}"
            if cand.is_file():
                return cand
    return None


class SwapScheduler:
    """Replays swaps by frame index: `due(next_frame)` returns the latest swap due before pulling that frame."""

    def __init__(self, swaps: list[Swap] | None = None):
        self._swaps = sorted(swaps or [], key=lambda s: s.frame)
        self._i = 0

    def due(self, next_frame: int) -> Swap | None:
        latest = None
        while self._i < len(self._swaps) and self._swaps[self._i].frame <= next_frame:
            latest = self._swaps[self._i]
            self._i += 1
        return latest

    @property
    def remaining(self) -> list[Swap]:
        return list(self._swaps[self._i:])
