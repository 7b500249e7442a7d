"""Procedural "mannequin world": a seeded 2D articulated figure wearing patterned garments.

Everything is numpy + OpenCV and deterministic in the seeds. Entities (people, garments,
backgrounds, motions) are identified by integer seeds; the split of an entity is the seed range
it comes from (`SPLIT_SEEDS`), so held-out entities are never seen in training.

Geometry lives in "body units" (1.0 = figure height) and is converted to pixels per clip, so
any frame size works. Limbs are posed in a tiny 3D body frame (lateral, down, forward), rotated
by the facing angle and projected, which gives foreshortening for turns and walks for free.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

# ----------------------------------------------------------------------------- splits
# The only place seed ranges are defined: [lo, hi) per split, disjoint by construction.
TRAIN_SEEDS = (0, 1_000_000)
VAL_SEEDS = (1_000_000, 1_100_000)
TEST_SEEDS = (2_000_000, 2_100_000)
SPLIT_SEEDS = {"train": TRAIN_SEEDS, "val": VAL_SEEDS, "test": TEST_SEEDS}

# Each entity kind draws from its own RNG stream, keyed by (tag, seed).
ENTITY_TAGS = {"person": 11, "upper": 23, "lower": 37, "background": 41, "motion": 53, "triplet": 67}

UPPER_TYPES = ("tshirt", "longsleeve", "tank", "jacket")
PATTERNS = ("solid", "hstripes", "vstripes", "checks", "dots", "logo")
LOWER_TYPES = ("pants", "shorts", "skirt")
BACKGROUND_KINDS = ("solid", "gradient", "room")
HAIR_STYLES = ("short", "long", "bun", "bob")
LOGO_SHAPES = ("circle", "diamond", "triangle", "bar")
MOTION_PROMPTS = {
    "walk_in_place": "walks forward",
    "walk_left": "walks to the left",
    "walk_right": "walks to the right",
    "wave_right": "waves right hand",
    "wave_left": "waves left hand",
    "turn": "turns around",
    "swing_arms": "swings arms",
    "pose": "strikes a pose",
    "sway": "sways from side to side",
}
MOTIONS = tuple(MOTION_PROMPTS)

LABELS = ("background", "skin", "hair", "upper", "lower", "shoes")
BACKGROUND, SKIN, HAIR, UPPER, LOWER, SHOES = range(len(LABELS))
_FIRST_PATTERN_ID = len(LABELS)  # fine ids for patterned parts start here, mapped back via LUT

KEYPOINT_NAMES = (
    "head", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
)

# Skin tones, light to dark; a person's tone interpolates between neighbours.
SKIN_TONES = ((255, 224, 196), (241, 194, 160), (224, 172, 128), (198, 134, 90),
              (160, 102, 66), (118, 72, 44), (84, 52, 34))
HAIR_COLOURS = ((22, 18, 16), (58, 38, 26), (104, 68, 40), (150, 86, 48), (214, 180, 110),
                (168, 168, 172), (60, 80, 170), (200, 90, 140))
WHITE = (255, 255, 255)

# Key poses for "strikes a pose": (r_upper, r_fore, l_upper, l_fore) lateral angles, lean, hip shift.
# Lateral angle: 0 = arm hanging down, pi/2 = horizontal outward, pi = straight up.
KEY_POSES = {
    "rest": (0.15, 0.1, 0.15, 0.1, 0.0, 0.0),
    "hips": (0.75, -0.9, 0.75, -0.9, 0.0, 0.0),
    "v_up": (2.5, 2.6, 2.5, 2.6, 0.0, 0.0),
    "flex": (1.5, 3.0, 1.5, 3.0, 0.0, 0.0),
    "point_r": (1.55, 1.55, 0.15, 0.1, -0.04, 0.02),
    "point_l": (0.15, 0.1, 1.55, 1.55, 0.04, -0.02),
    "hip_r_up_l": (0.75, -0.9, 2.3, 2.9, 0.03, 0.0),
    "up_r_hip_l": (2.3, 2.9, 0.75, -0.9, -0.03, 0.0),
}


@dataclass(frozen=True)
class WorldConfig:
    """Frame size, timing and the ranges the sampler draws from (all sizes relative to the frame)."""

    height: int = 160
    width: int = 128
    frames: int = 9  # must be 1 + 4k (causal VAE)
    fps: int = 16
    figure_fill: tuple[float, float] = (0.74, 0.88)  # figure height / frame height
    figure_span: float = 0.95  # body units the widest pose needs horizontally (bounds the scale)
    ground: float = 0.965  # sole line, fraction of frame height
    walk_margin: float = 0.22  # body units kept between the walker's centre and the frame edge
    camera_zoom: float = 0.03  # max relative zoom of the camera drift
    camera_shift: float = 0.02  # max translation, fraction of frame height
    camera_period: tuple[float, float] = (70.0, 160.0)  # frames per drift cycle
    subpixel_bits: int = 4  # cv2 fixed-point shift for smooth motion
    product_fill: float = 0.82  # garment bbox / frame size in product images
    tile_min_px: int = 32  # pattern tiles are repeated to at least this size (faster warps)
    min_period_px: int = 3  # patterns never get finer than this
    depth_ratio: float = 0.55  # torso depth / width: the projected width never drops below it
    far_arm_sin: float = 0.35  # |sin(facing)| above which the far arm is drawn behind the body
    min_thickness_px: int = 1


@dataclass(frozen=True)
class BodyRanges:
    """Sampling ranges for body proportions (body units before normalising to height 1)."""

    head_r: tuple = (0.058, 0.07)
    head_aspect: float = 1.15  # head height / width
    neck_len: tuple = (0.02, 0.035)
    neck_w: tuple = (0.026, 0.034)
    torso_len: tuple = (0.27, 0.32)
    shoulder_hw: tuple = (0.085, 0.118)
    waist_hw: tuple = (0.064, 0.085)
    hip_hw: tuple = (0.07, 0.098)
    upper_arm: tuple = (0.15, 0.18)
    forearm: tuple = (0.13, 0.16)
    arm_w: tuple = (0.032, 0.042)
    hand_r: tuple = (0.018, 0.024)
    thigh: tuple = (0.21, 0.25)
    shin: tuple = (0.2, 0.24)
    leg_w: tuple = (0.048, 0.062)
    ankle_h: float = 0.03
    foot_len: tuple = (0.06, 0.075)
    shoe_h: float = 0.028


@dataclass(frozen=True)
class GarmentRanges:
    pad: float = 0.008  # garments sit this far outside the skin
    sleeve_pad: float = 0.012
    neck_gap: float = 0.012  # neckline half width beyond the neck
    tshirt_sleeve: tuple = (0.35, 0.65)  # fraction of the upper arm
    long_sleeve: tuple = (0.88, 1.0)  # fraction of the forearm
    hem: dict = field(default_factory=lambda: {"tshirt": (0.92, 1.04), "longsleeve": (0.94, 1.04),
                                               "tank": (0.9, 1.0), "jacket": (1.02, 1.12)})
    neck_dip: tuple = (0.02, 0.05)
    tank_strap: tuple = (0.018, 0.03)
    jacket_open: tuple = (0.025, 0.045)  # half width of the open front at the collar
    period: dict = field(default_factory=lambda: {"hstripes": (0.03, 0.06), "vstripes": (0.03, 0.06),
                                                  "checks": (0.05, 0.09), "dots": (0.035, 0.06)})
    stripe_duty: tuple = (0.35, 0.55)
    dot_radius: tuple = (0.2, 0.32)  # fraction of the period
    logo_size: tuple = (0.028, 0.045)
    logo_height: tuple = (0.07, 0.12)  # below the neck, fraction of body height
    shorts_len: tuple = (0.35, 0.6)  # fraction of the thigh
    pants_len: tuple = (0.88, 1.0)  # fraction of the shin
    skirt_len: tuple = (0.45, 1.05)  # fraction of the thigh
    skirt_flare: tuple = (1.15, 1.6)


@dataclass(frozen=True)
class SceneRanges:
    """Backgrounds, in frame fractions (x of the width, y of the height)."""

    floor_y: tuple = (0.6, 0.8)
    window_w: tuple = (0.18, 0.32)
    window_h: tuple = (0.15, 0.28)
    door_w: tuple = (0.14, 0.22)
    door_h: tuple = (0.35, 0.5)
    window_top: float = 0.08  # highest window top
    window_gap: float = 0.12  # min gap between window bottom and the floor line
    side_band: float = 0.3  # features sit in the outer 30% of the width, clear of the figure
    edge: float = 0.02  # min distance of a feature from the frame edge
    trim: float = 0.012  # baseboard height, window frame and bar width, door knob radius
    knob_inset: float = 0.02
    trim_color: tuple = (236, 236, 232)
    knob_color: tuple = (212, 180, 90)


@dataclass(frozen=True)
class MotionRanges:
    cycle: tuple = (14.0, 24.0)  # frames per walk / wave / swing cycle
    amp: tuple = (0.75, 1.2)
    walk_turn: tuple = (0.75, 1.15)  # facing angle while walking across
    walk_speed: tuple = (0.004, 0.008)  # body units per frame
    turn_period: tuple = (40.0, 90.0)
    pose_hold: tuple = (14.0, 24.0)  # frames per key pose (including the transition)
    pose_blend: float = 0.45  # fraction of a key-pose slot spent transitioning
    pose_keys: int = 6


# ----------------------------------------------------------------------------- entities
@dataclass(frozen=True)
class Person:
    id: int
    fill: float
    head_r: float
    neck_len: float
    neck_w: float
    torso_len: float
    shoulder_hw: float
    waist_hw: float
    hip_hw: float
    upper_arm: float
    forearm: float
    arm_w: float
    hand_r: float
    thigh: float
    shin: float
    leg_w: float
    ankle_h: float
    foot_len: float
    shoe_h: float
    skin: tuple
    hair_style: str
    hair: tuple
    shoes: tuple
    eyes: tuple


@dataclass(frozen=True)
class UpperGarment:
    id: int
    type: str
    pattern: str
    color: tuple
    color2: tuple  # pattern / logo colour
    inner: tuple  # jacket inner shirt (unused for other types)
    period: float
    duty: float
    sleeve: float
    hem: float
    neck_dip: float
    strap: float
    open_w: float
    logo_shape: str
    logo_size: float
    logo_y: float


@dataclass(frozen=True)
class LowerGarment:
    id: int
    type: str
    color: tuple
    length: float
    flare: float


@dataclass(frozen=True)
class Background:
    id: int
    kind: str
    color: tuple
    color2: tuple
    floor_y: float
    feature: str  # room: "window" | "door"
    feature_color: tuple
    rect: tuple  # feature rect (x0, y0, x1, y1) in frame fractions


@dataclass(frozen=True)
class Motion:
    id: int
    name: str
    prompt: str
    phase: float
    cycle: float
    amp: float
    direction: float  # +1 / -1: turn direction, swing mode, walk facing
    walk_turn: float
    walk_speed: float
    turn_period: float
    pose_keys: tuple
    pose_hold: float
    cam_period: float
    cam_phase: tuple
    cam_amount: float


@dataclass
class Triplet:
    video: np.ndarray  # uint8 [T, H, W, 3], the person wears `gt["garment_id"]`
    garment: np.ndarray  # uint8 [H, W, 3] product image of that garment on white
    reference: np.ndarray  # uint8 [H, W, 3] frame 0 with another garment of the same type
    prompt: str
    gt: dict


# ----------------------------------------------------------------------------- helpers
def check_frames(frames: int) -> int:
    """Video lengths must be 1 + 4k (the causal VAE encodes the first frame alone)."""
    if not isinstance(frames, (int, np.integer)) or frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frame count must be 1 + 4k (1, 5, 9, 13, ...), got {frames!r}")
    return int(frames)


def check_size(size) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"frame size must be at least 8x8, got {h}x{w}")
    return h, w


def split_of_seed(seed: int) -> str | None:
    for name, (lo, hi) in SPLIT_SEEDS.items():
        if lo <= seed < hi:
            return name
    return None


def _rng(kind: str, seed: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seeds are non-negative integers, got {seed}")
    return np.random.default_rng([ENTITY_TAGS[kind], int(seed)])


def _u(rng, r) -> float:
    return float(rng.uniform(r[0], r[1]))


def _hsv(h, s, v) -> tuple:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _luma(c) -> float:
    return (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) / 255.0


def _garment_colour(rng) -> tuple:
    return _hsv(rng.random(), rng.uniform(0.35, 0.9), rng.uniform(0.35, 0.95))


def _contrast_colour(rng, base, min_diff=0.3) -> tuple:
    for _ in range(16):
        c = _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.1, 1.0))
        if abs(_luma(c) - _luma(base)) >= min_diff:
            return c
    return (255, 255, 255) if _luma(base) < 0.5 else (20, 20, 24)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _mix64(*vals: int) -> int:
    """splitmix64 over a tuple of ints: stable across runs and platforms."""
    mask = (1 << 64) - 1
    x = 0x9E3779B97F4A7C15
    for v in vals:
        x = (x ^ (int(v) & mask)) & mask
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        x ^= x >> 31
    return x


# ----------------------------------------------------------------------------- parts
class _Part:
    """One drawable primitive with per-frame geometry (fixed-point ints) and an optional pattern."""

    __slots__ = ("kind", "a", "b", "c", "color", "label", "tile", "M", "bbox", "vis", "arc")

    def __init__(self, kind, a, b=None, c=None, color=WHITE, label=None, vis=None, arc=(0, 360)):
        self.kind, self.a, self.b, self.c = kind, a, b, c
        self.color, self.label, self.vis, self.arc = color, label, vis, arc
        self.tile = self.M = self.bbox = None


def _fx(p, one):
    return np.round(np.asarray(p, np.float64) * one).astype(np.int32)


def _tuples(a):
    return [tuple(v) for v in a.tolist()]


class _Canvas:
    """Collects parts in draw groups; geometry arrays are float pixels [T, ...]."""

    def __init__(self, T, size, bits):
        self.T, self.size, self.bits, self.one = T, size, bits, 1 << bits
        self.groups: dict[str, list[_Part]] = {}
        self.next_pattern_id = _FIRST_PATTERN_ID

    def _add(self, group, part):
        self.groups.setdefault(group, []).append(part)
        return part

    def poly(self, group, pts, color, label, vis=None):
        pts = np.asarray(pts, np.float64)
        p = _Part("poly", np.ascontiguousarray(_fx(pts, self.one)), color=color, label=label, vis=vis)
        p.bbox = (pts.min(axis=1), pts.max(axis=1))
        return self._add(group, p)

    def capsule(self, group, p0, p1, thickness, color, label, vis=None):
        t = max(1, int(thickness))
        p = _Part("cap", _tuples(_fx(p0, self.one)), _tuples(_fx(p1, self.one)), t, color, label, vis)
        lo = np.minimum(p0, p1) - t / 2.0
        hi = np.maximum(p0, p1) + t / 2.0
        p.bbox = (lo, hi)
        return self._add(group, p)

    def ellipse(self, group, centre, axes, angle_deg, color, label, vis=None, arc=(0, 360)):
        axes = np.maximum(np.asarray(axes, np.float64), 0.5)
        p = _Part("ell", _tuples(_fx(centre, self.one)), _tuples(_fx(axes, self.one)),
                  np.asarray(angle_deg, np.float64).tolist(), color, label, vis, arc)
        return self._add(group, p)

    def circle(self, group, centre, radius, color, label, vis=None):
        r = _fx(np.maximum(radius, 0.5), self.one).tolist()
        return self._add(group, _Part("circ", _tuples(_fx(centre, self.one)), r, None, color, label, vis))

    def pattern(self, part, tile, origin, axis_u, axis_v, k):
        """Fill `part` with `tile` in its local frame: px = origin + a*axis_u + b*axis_v, tile px = k*(a, b)."""
        part.label = self.next_pattern_id
        self.next_pattern_id += 1
        basis = np.stack([axis_u, axis_v], axis=-1)  # [T, 2, 2], columns are the axes
        det = basis[:, 0, 0] * basis[:, 1, 1] - basis[:, 0, 1] * basis[:, 1, 0]
        bad = np.abs(det) < 1e-9
        basis = np.where(bad[:, None, None], np.eye(2), basis)
        inv = np.linalg.inv(basis)
        M = np.empty((self.T, 2, 3))
        M[:, :, :2] = k * inv
        M[:, :, 2] = -k * np.einsum("tij,tj->ti", inv, origin)
        part.tile, part.M = tile, M
        h, w = self.size
        lo, hi = part.bbox
        x0 = np.clip(np.floor(lo[:, 0]) - 1, 0, w).astype(int)
        y0 = np.clip(np.floor(lo[:, 1]) - 1, 0, h).astype(int)
        x1 = np.clip(np.ceil(hi[:, 0]) + 2, 0, w).astype(int)
        y1 = np.clip(np.ceil(hi[:, 1]) + 2, 0, h).astype(int)
        part.bbox = np.stack([x0, y0, x1, y1], axis=1).tolist()
        return part

    def draw(self, img, lab, t, order):
        bits = self.bits
        aa, l8 = cv2.LINE_AA, cv2.LINE_8
        for g in order:
            for p in self.groups.get(g, ()):
                if p.vis is not None and not p.vis[t]:
                    continue
                k, col, lb = p.kind, p.color, p.label
                if k == "poly":
                    pts = [p.a[t]]
                    cv2.fillPoly(img, pts, col, aa, bits)
                    if lb is not None:
                        cv2.fillPoly(lab, pts, lb, l8, bits)
                elif k == "cap":
                    cv2.line(img, p.a[t], p.b[t], col, p.c, aa, bits)
                    if lb is not None:
                        cv2.line(lab, p.a[t], p.b[t], lb, p.c, l8, bits)
                elif k == "ell":
                    s, e = p.arc
                    cv2.ellipse(img, p.a[t], p.b[t], p.c[t], s, e, col, -1, aa, bits)
                    if lb is not None:
                        cv2.ellipse(lab, p.a[t], p.b[t], p.c[t], s, e, lb, -1, l8, bits)
                else:
                    cv2.circle(img, p.a[t], p.b[t], col, -1, aa, bits)
                    if lb is not None:
                        cv2.circle(lab, p.a[t], p.b[t], lb, -1, l8, bits)
                if p.tile is not None:
                    _apply_pattern(img, lab, p, t)


def _apply_pattern(img, lab, p, t):
    x0, y0, x1, y1 = p.bbox[t]
    if x1 <= x0 or y1 <= y0:
        return
    m = cv2.compare(lab[y0:y1, x0:x1], p.label, cv2.CMP_EQ)
    M = p.M[t].copy()
    M[:, 2] += M[:, 0] * x0 + M[:, 1] * y0
    warped = cv2.warpAffine(p.tile, M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_WRAP)
    cv2.copyTo(warped, m, img[y0:y1, x0:x1])  # writes into the view (numpy masking is ~5x slower)


_LABEL_LUT = np.arange(256, dtype=np.uint8)
_LABEL_LUT[_FIRST_PATTERN_ID:] = UPPER  # only upper garments carry patterns


# ----------------------------------------------------------------------------- textures
def _pattern_tile(g: UpperGarment, unit_px: float, cfg: WorldConfig):
    """Periodic tile of the garment pattern and its scale k (tile px per body unit); None if no tile."""
    if g.pattern in ("solid", "logo"):
        return None, 0.0
    period_px = max(cfg.min_period_px, int(round(g.period * unit_px)))
    k = period_px / g.period
    reps = max(1, math.ceil(cfg.tile_min_px / period_px))
    n = period_px * reps
    tile = np.empty((n, n, 3), np.uint8)
    tile[:] = g.color
    idx = np.arange(n) % period_px
    on = idx < max(1, int(round(g.duty * period_px)))
    if g.pattern == "hstripes":
        tile[on, :] = g.color2
    elif g.pattern == "vstripes":
        tile[:, on] = g.color2
    elif g.pattern == "checks":
        half = np.arange(n) % period_px < period_px / 2.0
        tile[half[:, None] ^ half[None, :]] = g.color2
    elif g.pattern == "dots":
        one = 1 << cfg.subpixel_bits
        r = max(0.75, g.duty * period_px)
        for i in range(reps):
            for j in range(reps):
                c = ((j + 0.5) * period_px, (i + 0.5) * period_px)
                cv2.circle(tile, (int(c[0] * one), int(c[1] * one)), int(r * one), g.color2, -1,
                           cv2.LINE_AA, cfg.subpixel_bits)
    return tile, k


# ----------------------------------------------------------------------------- the world
class MannequinWorld:
    """Seeded sampler + renderer. All methods are pure functions of their arguments."""

    def __init__(self, config: WorldConfig | None = None, body: BodyRanges | None = None,
                 garments: GarmentRanges | None = None, motions: MotionRanges | None = None,
                 scene: SceneRanges | None = None):
        self.config = config or WorldConfig()
        self.body = body or BodyRanges()
        self.garments = garments or GarmentRanges()
        self.motions = motions or MotionRanges()
        self.scene = scene or SceneRanges()

    # ---------------------------------------------------------------- sampling
    def sample_person(self, seed: int) -> Person:
        rng, b = _rng("person", seed), self.body
        lens = {k: _u(rng, getattr(b, k)) for k in ("head_r", "neck_len", "neck_w", "torso_len",
                                                     "shoulder_hw", "waist_hw", "hip_hw", "upper_arm",
                                                     "forearm", "arm_w", "hand_r", "thigh", "shin",
                                                     "leg_w", "foot_len")}
        lens["ankle_h"], lens["shoe_h"] = b.ankle_h, b.shoe_h
        total = (2 * lens["head_r"] * b.head_aspect + lens["neck_len"] + lens["torso_len"] + lens["thigh"]
                 + lens["shin"] + lens["ankle_h"])
        lens = {k: v / total for k, v in lens.items()}
        tone = rng.uniform(0, len(SKIN_TONES) - 1)
        i = min(int(tone), len(SKIN_TONES) - 2)
        f = tone - i
        skin = tuple(int(round((1 - f) * a + f * c)) for a, c in zip(SKIN_TONES[i], SKIN_TONES[i + 1]))
        hair = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
        hair = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in hair)
        shoes = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.08, 0.85))
        return Person(id=int(seed), fill=_u(rng, self.config.figure_fill), skin=skin,
                      hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))], hair=hair,
                      shoes=shoes, eyes=(30, 26, 24), **lens)

    def sample_upper_garment(self, seed: int, type: str | None = None) -> UpperGarment:
        rng, g = _rng("upper", seed), self.garments
        gtype = UPPER_TYPES[int(rng.integers(len(UPPER_TYPES)))]
        if type is not None:
            if type not in UPPER_TYPES:
                raise ValueError(f"unknown upper garment type {type!r}; choose from {UPPER_TYPES}")
            gtype = type
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        color = _garment_colour(rng)
        color2 = _contrast_colour(rng, color)
        inner = _contrast_colour(rng, color, 0.2)
        pr = g.period.get(pattern, (0.04, 0.06))
        duty = _u(rng, g.dot_radius if pattern == "dots" else g.stripe_duty)
        sleeve = _u(rng, g.tshirt_sleeve if gtype == "tshirt" else g.long_sleeve)
        return UpperGarment(
            id=int(seed), type=gtype, pattern=pattern, color=color, color2=color2, inner=inner,
            period=_u(rng, pr), duty=duty, sleeve=sleeve, hem=_u(rng, g.hem[gtype]),
            neck_dip=_u(rng, g.neck_dip), strap=_u(rng, g.tank_strap), open_w=_u(rng, g.jacket_open),
            logo_shape=LOGO_SHAPES[int(rng.integers(len(LOGO_SHAPES)))], logo_size=_u(rng, g.logo_size),
            logo_y=_u(rng, g.logo_height))

    def sample_lower_garment(self, seed: int) -> LowerGarment:
        rng, g = _rng("lower", seed), self.garments
        gtype = LOWER_TYPES[int(rng.integers(len(LOWER_TYPES)))]
        rng_len = {"pants": g.pants_len, "shorts": g.shorts_len, "skirt": g.skirt_len}[gtype]
        color = _hsv(rng.random(), rng.uniform(0.15, 0.8), rng.uniform(0.2, 0.85))
        return LowerGarment(id=int(seed), type=gtype, color=color, length=_u(rng, rng_len),
                            flare=_u(rng, g.skirt_flare))

    def sample_background(self, seed: int) -> Background:
        rng = _rng("background", seed)
        kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
        c1 = _hsv(rng.random(), rng.uniform(0.05, 0.45), rng.uniform(0.45, 0.97))
        c2 = _hsv(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.8))
        feature = ("window", "door")[int(rng.integers(2))]
        sc = self.scene
        floor_y = _u(rng, sc.floor_y)
        if feature == "window":
            fc = _hsv(rng.uniform(0.5, 0.62), rng.uniform(0.2, 0.5), rng.uniform(0.85, 1.0))
            w, h = _u(rng, sc.window_w), _u(rng, sc.window_h)
            y0 = rng.uniform(sc.window_top, max(sc.window_top, floor_y - h - sc.window_gap))
        else:
            fc = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
            w, h = _u(rng, sc.door_w), _u(rng, sc.door_h)
            y0 = floor_y - h
        left = rng.uniform(sc.edge, max(sc.edge, sc.side_band - w / 2))
        right = rng.uniform(1 - sc.side_band - w / 2, 1 - sc.edge - w)
        x0 = (left, right)[int(rng.integers(2))]
        return Background(id=int(seed), kind=kind, color=c1, color2=c2, floor_y=float(floor_y),
                          feature=feature, feature_color=fc,
                          rect=(float(x0), float(y0), float(x0 + w), float(y0 + h)))

    def sample_motion(self, seed: int, name: str | None = None) -> Motion:
        rng, m = _rng("motion", seed), self.motions
        pick = MOTIONS[int(rng.integers(len(MOTIONS)))]
        if name is not None:
            if name not in MOTION_PROMPTS:
                raise ValueError(f"unknown motion {name!r}; choose from {MOTIONS}")
            pick = name
        keys = tuple(int(k) for k in rng.permutation(len(KEY_POSES))[: m.pose_keys])
        cfg = self.config
        return Motion(id=int(seed), name=pick, prompt=MOTION_PROMPTS[pick], phase=float(rng.uniform(0, 2 * np.pi)),
                      cycle=_u(rng, m.cycle), amp=_u(rng, m.amp), direction=float(rng.choice([-1.0, 1.0])),
                      walk_turn=_u(rng, m.walk_turn), walk_speed=_u(rng, m.walk_speed),
                      turn_period=_u(rng, m.turn_period), pose_keys=keys, pose_hold=_u(rng, m.pose_hold),
                      cam_period=_u(rng, cfg.camera_period),
                      cam_phase=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 3)),
                      cam_amount=float(rng.uniform(0.3, 1.0)))

    # ---------------------------------------------------------------- triplets
    def triplet_seeds(self, index: int, split: str = "train") -> dict:
        """Entity seeds for triplet `index` of `split`, all inside the split's seed range."""
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
        lo, hi = SPLIT_SEEDS[split]
        span = hi - lo
        base = _mix64(ENTITY_TAGS["triplet"], lo, int(index))
        pick = {k: lo + _mix64(base, i) % span for i, k in
                enumerate(("person", "upper", "ref_upper", "lower", "background", "motion"))}
        if pick["ref_upper"] == pick["upper"]:
            pick["ref_upper"] = lo + (pick["upper"] - lo + 1) % span
        return pick

    def sample_triplet(self, index: int, split: str = "train", frames: int | None = None,
                       size: tuple[int, int] | None = None) -> Triplet:
        """Mismatch triplet: video wears G, garment = product(G), reference = frame 0 wearing G' (same type)."""
        frames = check_frames(self.config.frames if frames is None else frames)
        size = check_size(size or (self.config.height, self.config.width))
        s = self.triplet_seeds(index, split)
        person = self.sample_person(s["person"])
        upper = self.sample_upper_garment(s["upper"])
        ref_upper = self.sample_upper_garment(s["ref_upper"], type=upper.type)
        lower = self.sample_lower_garment(s["lower"])
        bg = self.sample_background(s["background"])
        motion = self.sample_motion(s["motion"])
        video, gt = self.render_frames(person, upper, lower, bg, motion, frames, size)
        ref, ref_gt = self.render_frames(person, ref_upper, lower, bg, motion, 1, size)
        gt.update(ref_garment_id=ref_upper.id, reference_mask=ref_gt["masks"][0], index=int(index), split=split)
        return Triplet(video=video, garment=self.product_image(upper, size), reference=ref[0],
                       prompt=motion.prompt, gt=gt)

    # ---------------------------------------------------------------- rendering
    def render_frames(self, person: Person, upper: UpperGarment | None, lower: LowerGarment | None,
                      background: Background, motion: Motion, frames: int, size=None, start_frame: int = 0):
        """Render frames [start_frame, start_frame + frames). Any frame count >= 1 is accepted here so long
        clips can be rendered in segments (e.g. garment swaps); datasets enforce 1 + 4k."""
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        size = check_size(size or (self.config.height, self.config.width))
        H, W = size
        cfg = self.config
        t = np.arange(start_frame, start_frame + frames, dtype=np.float64)
        canvas = _Canvas(frames, size, cfg.subpixel_bits)
        rig = self._pose_rig(person, motion, t, size)
        bg_rows = self._background_parts(canvas, background, rig, size)
        self._person_parts(canvas, person, rig)
        if lower is not None:
            self._lower_parts(canvas, lower, person, rig)
        if upper is not None:
            self._upper_parts(canvas, upper, person, rig)
        out = np.empty((frames, H, W, 3), np.uint8)
        out[:] = background.color if bg_rows is None else bg_rows[:, :, None, :]
        fine = np.zeros((frames, H, W), np.uint8)
        orders = self._draw_orders(rig)
        for i in range(frames):
            canvas.draw(out[i], fine[i], i, orders[i])
        masks = cv2.LUT(fine.reshape(frames * H, W), _LABEL_LUT).reshape(frames, H, W)
        gt = {
            "keypoints": rig["keypoints"].astype(np.float32), "masks": masks,
            "garment_id": None if upper is None else upper.id, "lower_garment_id": None if lower is None else lower.id,
            "person_id": person.id, "background_id": background.id, "motion": motion.name,
            "upper_type": None if upper is None else upper.type, "pattern": None if upper is None else upper.pattern,
            "lower_type": None if lower is None else lower.type, "start_frame": int(start_frame),
        }
        return out, gt

    def render_swap(self, person, schedule, lower, background, motion, frames: int, size=None):
        """Render one continuous clip whose upper garment changes: schedule = [(frame, garment), ...]
        sorted by frame, first entry at frame 0. gt["garment_ids"] gives the worn id per frame."""
        if not schedule or schedule[0][0] != 0:
            raise ValueError("schedule must start at frame 0")
        bounds = [f for f, _ in schedule[1:]] + [frames]
        vids, masks, kps, ids = [], [], [], []
        for (f0, g), f1 in zip(schedule, bounds):
            if f1 <= f0:
                raise ValueError(f"schedule frames must increase and stay below {frames}")
            v, gt = self.render_frames(person, g, lower, background, motion, f1 - f0, size, start_frame=f0)
            vids.append(v), masks.append(gt["masks"]), kps.append(gt["keypoints"])
            ids += [g.id] * (f1 - f0)
        gt.update(masks=np.concatenate(masks), keypoints=np.concatenate(kps), garment_ids=np.array(ids),
                  start_frame=0)
        return np.concatenate(vids), gt

    def product_image(self, garment: UpperGarment | LowerGarment, size=None) -> np.ndarray:
        """Flat-lay render of one garment, centred on white, scaled to fit the frame (letterboxed)."""
        size = check_size(size or (self.config.height, self.config.width))
        H, W = size
        cfg = self.config
        canon = self._canonical_person()

        def build(scale, offset):
            canvas = _Canvas(1, size, cfg.subpixel_bits)
            rig = self._flat_rig(canon, garment, scale, offset)
            if isinstance(garment, UpperGarment):
                self._upper_parts(canvas, garment, canon, rig)
            else:
                self._lower_parts(canvas, garment, canon, rig)
            return canvas, rig

        # measure at a large scale so integer line widths do not distort the extent
        probe_scale = float(max(H, W))
        probe, _ = build(probe_scale, np.zeros(2))
        lo, hi = (v / probe_scale for v in _canvas_extent(probe))
        ext = np.maximum(hi - lo, 1e-6)
        scale = cfg.product_fill * min(W / ext[0], H / ext[1])
        offset = np.array([W / 2.0, H / 2.0]) - scale * (lo + hi) / 2.0
        canvas, rig = build(scale, offset)
        img = np.full((H, W, 3), 255, np.uint8)
        lab = np.zeros((H, W), np.uint8)
        canvas.draw(img, lab, 0, rig["order"])
        return img

    # ---------------------------------------------------------------- rigs
    def _canonical_person(self) -> Person:
        b = self.body
        mid = {k: (getattr(b, k)[0] + getattr(b, k)[1]) / 2.0 for k in (
            "head_r", "neck_len", "neck_w", "torso_len", "shoulder_hw", "waist_hw", "hip_hw", "upper_arm",
            "forearm", "arm_w", "hand_r", "thigh", "shin", "leg_w", "foot_len")}
        mid["ankle_h"], mid["shoe_h"] = b.ankle_h, b.shoe_h
        return Person(id=-1, fill=1.0, skin=WHITE, hair_style="short", hair=WHITE, shoes=WHITE, eyes=WHITE, **mid)

    def _motion_angles(self, m: Motion, t: np.ndarray, walk_range: float) -> dict:
        """Per-frame body-frame angles. Arms/legs: lateral (a) and sagittal (b) angles for upper/lower segments."""
        T = len(t)
        z = np.zeros(T)
        rest = KEY_POSES["rest"]
        A = {
            "x": z.copy(), "bob": z.copy(), "lean": z.copy(), "theta": z.copy(), "tilt": z.copy(),
            "ra": z + rest[0], "rb": z.copy(), "ra2": z + rest[1], "rb2": z + 0.15,
            "la": z + rest[2], "lb": z.copy(), "la2": z + rest[3], "lb2": z + 0.15,
            "rla": z + 0.03, "rlb": z.copy(), "rla2": z + 0.03, "rlb2": z.copy(),
            "lla": z + 0.03, "llb": z.copy(), "lla2": z + 0.03, "llb2": z.copy(),
        }
        w = 2 * np.pi / m.cycle
        ph = m.phase + w * t
        s = np.sin(ph)
        amp = m.amp
        breathe = 0.02 * np.sin(0.5 * ph)
        A["ra"] += breathe
        A["la"] += breathe
        if m.name in ("walk_in_place", "walk_left", "walk_right"):
            swing = 0.42 * amp * s
            A["rlb"], A["llb"] = swing, -swing
            A["rlb2"] = swing - 0.9 * amp * np.maximum(0.0, -np.cos(ph))
            A["llb2"] = -swing - 0.9 * amp * np.maximum(0.0, np.cos(ph))
            A["rb"], A["lb"] = -0.5 * swing, 0.5 * swing
            A["rb2"], A["lb2"] = A["rb"] + 0.35, A["lb"] + 0.35
            A["bob"] = 0.008 * amp * np.abs(np.cos(ph))
            if m.name == "walk_in_place":
                A["theta"] = 0.06 * np.sin(0.5 * ph)
            else:
                heading = -1.0 if m.name == "walk_left" else 1.0
                # triangle fold keeps the walker inside the frame on long clips
                span = max(walk_range, 1e-6)
                start = -heading * 0.85 * span
                pos = start + heading * m.walk_speed * t
                period = 4 * span
                u = np.mod(pos + span, period)
                A["x"] = np.where(u < 2 * span, u - span, 3 * span - u)
                vel = np.where(u < 2 * span, 1.0, -1.0) * heading
                A["theta"] = np.sign(vel) * m.walk_turn
        elif m.name in ("wave_right", "wave_left"):
            side = "r" if m.name == "wave_right" else "l"
            A[side + "a"] = z + 2.0 + 0.1 * amp * np.sin(0.5 * ph)
            A[side + "a2"] = np.pi - 0.25 + 0.5 * amp * s
            A[side + "b2"] = z
            A["lean"] = 0.03 * (1 if side == "l" else -1) + 0.01 * s
            A["tilt"] = 0.05 * np.sin(0.5 * ph)
        elif m.name == "turn":
            A["theta"] = m.phase + m.direction * 2 * np.pi * t / m.turn_period
            A["ra"] += 0.05 * s
            A["la"] += 0.05 * s
        elif m.name == "swing_arms":
            if m.direction > 0:  # jumping-jack style, mirrored
                lift = 0.2 + 0.9 * amp * (0.5 + 0.5 * s)
                A["ra"], A["la"] = lift, lift.copy()
                A["ra2"], A["la2"] = lift + 0.1, lift + 0.1
            else:  # pendulum, both arms to the same side
                sw = 0.8 * amp * s
                A["ra"], A["la"] = 0.15 - sw, 0.15 + sw
                A["ra2"], A["la2"] = A["ra"] - 0.1 * s, A["la"] + 0.1 * s
                A["lean"] = 0.03 * s
            A["bob"] = 0.004 * np.abs(s)
        elif m.name == "pose":
            names = list(KEY_POSES)
            keys = np.array([KEY_POSES[names[k]] for k in m.pose_keys])
            slot = t / m.pose_hold
            i0 = np.floor(slot).astype(int)
            frac = slot - i0
            blend = self.motions.pose_blend
            wgt = _smoothstep((frac - (1 - blend)) / blend)[:, None]
            cur = keys[i0 % len(keys)]
            nxt = keys[(i0 + 1) % len(keys)]
            p = (1 - wgt) * cur + wgt * nxt
            A["ra"], A["ra2"], A["la"], A["la2"], A["lean"] = p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 4]
            A["x"] = p[:, 5]
            A["rb2"], A["lb2"] = z + 0.1, z + 0.1
            A["theta"] = 0.15 * np.sin(0.3 * ph)
        elif m.name == "sway":
            A["x"] = 0.05 * amp * s
            A["lean"] = -0.06 * amp * s
            A["ra"] += 0.08 * s
            A["la"] -= 0.08 * s
            A["tilt"] = 0.06 * s
        return A

    def _camera(self, m: Motion, t, size):
        cfg = self.config
        H, W = size
        w = 2 * np.pi / m.cam_period
        p = m.cam_phase
        zoom = 1.0 + cfg.camera_zoom * m.cam_amount * np.sin(w * t + p[0])
        dx = cfg.camera_shift * H * m.cam_amount * np.sin(0.8 * w * t + p[1])
        dy = 0.5 * cfg.camera_shift * H * m.cam_amount * np.sin(0.6 * w * t + p[2])
        return zoom, np.stack([dx, dy], axis=1), np.array([W / 2.0, H / 2.0])

    def _pose_rig(self, p: Person, m: Motion, t, size) -> dict:
        cfg = self.config
        H, W = size
        U = min(p.fill * H, W / cfg.figure_span)
        walk_range = max(0.0, (W / 2.0) / U - cfg.walk_margin)
        A = self._motion_angles(m, t, walk_range)
        zoom, shift, centre = self._camera(m, t, size)
        sole = cfg.ground * H
        hip_y = sole - (p.thigh + p.shin + p.ankle_h) * U
        pelvis = np.stack([W / 2.0 + A["x"] * U, hip_y - A["bob"] * U], axis=1)
        return self._rig(p, A, pelvis, U, zoom, shift, centre)

    def _flat_rig(self, p: Person, g, scale, offset) -> dict:
        """Static, spread-out pose for flat-lay product shots (no camera, facing front)."""
        z = np.zeros(1)
        A = {k: z.copy() for k in ("x", "bob", "lean", "theta", "tilt", "rb", "rb2", "lb", "lb2",
                                   "rlb", "rlb2", "llb", "llb2")}
        if isinstance(g, UpperGarment):
            up, lo = (0.85, 0.85) if g.type == "tshirt" else (0.4, 0.3)
        else:
            up, lo = (0.0, 0.0)
        leg = 0.08 if isinstance(g, LowerGarment) and g.type != "skirt" else 0.0
        A.update(ra=z + up, ra2=z + lo, la=z + up, la2=z + lo, rla=z + leg, rla2=z + leg, lla=z + leg,
                 lla2=z + leg)
        pelvis = offset[None, :] + np.array([[0.0, 0.0]])
        rig = self._rig(p, A, pelvis, scale, np.ones(1), np.zeros((1, 2)), np.zeros(2))
        rig["order"] = ("legs", "lower", "torso", "upper", "arm_r", "arm_l")
        return rig

    def _rig(self, p: Person, A: dict, pelvis, U, zoom, shift, centre) -> dict:
        """Joint positions in final pixels (camera applied) and torso axes, all [T, ...]."""
        cfg = self.config
        th = A["theta"]
        ct, st = np.cos(th), np.sin(th)
        lean = A["lean"]
        down = np.stack([-np.sin(lean), np.cos(lean)], axis=1)  # torso axis in the image
        across = np.stack([np.cos(lean), np.sin(lean)], axis=1)

        def limb(a_lat, b_sag, side):
            # body frame: lateral (+ = outward for this side), down, forward; rotate by facing, project
            lat = side * np.sin(a_lat)
            dn = np.cos(a_lat) * np.cos(b_sag)
            fw = np.cos(a_lat) * np.sin(b_sag)
            x = lat * ct + fw * st
            # body-frame vectors are relative to the leaning torso
            return x[:, None] * across + dn[:, None] * down

        neck = pelvis - p.torso_len * U * down
        head_c = neck - (p.neck_len + p.head_r * self.body.head_aspect) * U * down
        sh_off = (p.shoulder_hw - 0.5 * p.arm_w) * U
        sh_y = 0.5 * p.arm_w * U
        sr = neck + (-sh_off * ct)[:, None] * across + sh_y * down
        sl = neck + (sh_off * ct)[:, None] * across + sh_y * down
        er = sr + p.upper_arm * U * limb(A["ra"], A["rb"], -1)
        wr = er + p.forearm * U * limb(A["ra2"], A["rb2"], -1)
        el = sl + p.upper_arm * U * limb(A["la"], A["lb"], 1)
        wl = el + p.forearm * U * limb(A["la2"], A["lb2"], 1)
        hip_off = (p.hip_hw - 0.5 * p.leg_w) * U
        hr = pelvis + (-hip_off * ct)[:, None] * across
        hl = pelvis + (hip_off * ct)[:, None] * across
        kr = hr + p.thigh * U * limb(A["rla"], A["rlb"], -1)
        ar = kr + p.shin * U * limb(A["rla2"], A["rlb2"], -1)
        kl = hl + p.thigh * U * limb(A["lla"], A["llb"], 1)
        al = kl + p.shin * U * limb(A["lla2"], A["llb2"], 1)

        def cam(x):
            return centre + zoom.reshape((-1,) + (1,) * (x.ndim - 1)) * (x - centre) + (
                shift if x.ndim == 2 else shift[:, None, :])

        pts = np.stack([head_c, neck, sr, er, wr, sl, el, wl, pelvis, hr, kr, ar, hl, kl, al], axis=1)
        pts = cam(pts)
        wf = np.maximum(np.abs(ct), cfg.depth_ratio)
        UZ = U * zoom
        rig = {name: pts[:, i] for i, name in enumerate(KEYPOINT_NAMES)}
        rig.update(keypoints=pts, U=U, UZ=UZ, camera=(zoom, shift, centre), cos=ct, sin=st, lean=lean, tilt=A["tilt"],
                   tu=across * (UZ * wf)[:, None], tv=down * UZ[:, None], ux=across * UZ[:, None])
        return rig

    def _draw_orders(self, rig):
        thr = self.config.far_arm_sin
        base = ["bg", "hair_back", "legs", "lower", "torso", "upper", "arm_r", "arm_l", "head"]
        orders = []
        for s, c in zip(rig["sin"].tolist(), rig["cos"].tolist()):
            o = list(base)
            if s > thr:  # facing +x: the left arm is the far one
                o.remove("arm_l")
                o.insert(1, "arm_l")
            elif s < -thr:
                o.remove("arm_r")
                o.insert(1, "arm_r")
            if c < 0:  # seen from behind: long hair falls over the back
                o.remove("hair_back")
                o.insert(o.index("head"), "hair_back")
            orders.append(o)
        return orders

    # ---------------------------------------------------------------- parts
    def _local(self, rig, pts_local, origin=None):
        """Torso-local (a, b) body units -> pixels; a is foreshortened by the facing angle."""
        o = rig["neck"] if origin is None else origin
        pl = np.asarray(pts_local, np.float64)
        return o[:, None, :] + pl[None, :, 0:1] * rig["tu"][:, None, :] + pl[None, :, 1:2] * rig["tv"][:, None, :]

    def _background_parts(self, canvas, bg: Background, rig, size):
        """Background primitives (no label). Returns per-frame row colours for gradients, else None (fill)."""
        H, W = size
        if bg.kind == "solid":
            return None
        zoom, shift, centre = rig["camera"]
        T = len(zoom)
        if bg.kind == "gradient":
            # invert the camera per frame row to find the world y it shows
            y = np.arange(H, dtype=np.float64)[None, :]
            wy = centre[1] + (y - centre[1] - shift[:, 1:2]) / zoom[:, None]
            f = np.clip(wy / max(H - 1, 1), 0.0, 1.0)[..., None]
            rows = (1 - f) * np.array(bg.color) + f * np.array(bg.color2)
            return np.round(rows).astype(np.uint8)

        def cam(px):
            return centre + zoom[:, None, None] * (px[None] - centre) + shift[:, None, :]

        sc = self.scene
        margin = max(H, W)  # floor and baseboard overhang so camera drift never shows their ends
        fy = bg.floor_y * H
        trim = sc.trim * H
        floor = np.array([[-margin, fy], [W + margin, fy], [W + margin, H + margin], [-margin, H + margin]])
        canvas.poly("bg", cam(floor), bg.color2, None)
        board = np.array([[-margin, fy - trim], [W + margin, fy - trim], [W + margin, fy], [-margin, fy]])
        canvas.poly("bg", cam(board), tuple(int(c * 0.8) for c in bg.color), None)
        x0, y0, x1, y1 = bg.rect
        rect = np.array([[x0 * W, y0 * H], [x1 * W, y0 * H], [x1 * W, y1 * H], [x0 * W, y1 * H]])
        if bg.feature == "window":
            outer = rect + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * trim
            canvas.poly("bg", cam(outer), sc.trim_color, None)
            canvas.poly("bg", cam(rect), bg.feature_color, None)
            mx = (x0 + x1) / 2 * W
            bar = np.array([[mx - trim / 2, y0 * H], [mx + trim / 2, y0 * H], [mx + trim / 2, y1 * H],
                            [mx - trim / 2, y1 * H]])
            canvas.poly("bg", cam(bar), sc.trim_color, None)
        else:
            canvas.poly("bg", cam(rect), bg.feature_color, None)
            knob = np.array([[(x1 - sc.knob_inset) * W, (y0 + y1) / 2 * H]])
            canvas.circle("bg", cam(knob)[:, 0], np.full(T, trim), sc.knob_color, None)
        return None

    def _person_parts(self, c: _Canvas, p: Person, rig):
        U, UZ = rig["U"], rig["UZ"]
        T = c.T
        tk = lambda w: max(self.config.min_thickness_px, int(round(w * U)))  # noqa: E731
        arm_t, leg_t = tk(p.arm_w), tk(p.leg_w)
        # legs and shoes
        for side in ("r", "l"):
            hip, knee, ank = rig[side + "_hip"], rig[side + "_knee"], rig[side + "_ankle"]
            c.capsule("legs", hip, knee, leg_t, p.skin, SKIN)
            c.capsule("legs", knee, ank, leg_t, p.skin, SKIN)
            fdir = rig["sin"]
            centre = ank + np.stack([0.3 * p.foot_len * fdir * UZ, 0.45 * p.shoe_h * UZ], axis=1)
            axes = np.stack([0.5 * p.foot_len * (0.8 + 0.2 * np.abs(fdir)) * UZ, 0.7 * p.shoe_h * UZ], axis=1)
            c.ellipse("legs", centre, axes, np.zeros(T), p.shoes, SHOES)
        # torso skin and neck
        sh, wa, hp = p.shoulder_hw, p.waist_hw, p.hip_hw
        L = p.torso_len
        torso = [(-0.8 * sh, 0.0), (-sh, 0.03), (-0.95 * sh, 0.12), (-wa, 0.6 * L), (-hp, L),
                 (hp, L), (wa, 0.6 * L), (0.95 * sh, 0.12), (sh, 0.03), (0.8 * sh, 0.0)]
        c.capsule("torso", rig["neck"] + 0.01 * rig["tv"], rig["head"], tk(p.neck_w), p.skin, SKIN)
        c.poly("torso", self._local(rig, torso), p.skin, SKIN)
        # arms + hands
        for side in ("r", "l"):
            g = "arm_" + side
            s, e, w = rig[side + "_shoulder"], rig[side + "_elbow"], rig[side + "_wrist"]
            c.capsule(g, s, e, arm_t, p.skin, SKIN)
            c.capsule(g, e, w, arm_t, p.skin, SKIN)
            d = w - e
            n = np.linalg.norm(d, axis=1, keepdims=True)
            hand = w + 0.6 * p.hand_r * UZ[:, None] * d / np.maximum(n, 1e-6)
            c.circle(g, hand, p.hand_r * UZ, p.skin, SKIN)
        # head, face, hair
        hc = rig["head"]
        rx, ry = p.head_r * UZ, p.head_r * self.body.head_aspect * UZ
        tilt = np.degrees(rig["tilt"] + rig["lean"])
        ct, st = rig["cos"], rig["sin"]
        if p.hair_style in ("long", "bob"):
            drop = 0.9 if p.hair_style == "long" else 0.15
            tall = 1.9 if p.hair_style == "long" else 1.05
            c.ellipse("hair_back", hc + drop * ry[:, None] * rig["tv"] / UZ[:, None],
                      np.stack([1.25 * rx, tall * ry], 1), tilt, p.hair, HAIR)
        c.ellipse("head", hc, np.stack([rx, ry], 1), tilt, p.skin, SKIN)
        for off in (-0.45, 0.45):
            ang = np.arctan2(st, ct) + off
            vis = np.cos(ang) > 0.2
            eye = hc + np.stack([0.85 * rx * np.sin(ang), 0.08 * ry], 1)
            c.circle("head", eye, np.maximum(0.12 * rx, 0.5), p.eyes, SKIN, vis=vis)
        cap_c = hc - 0.15 * ry[:, None] * rig["tv"] / UZ[:, None]
        c.ellipse("head", cap_c, np.stack([1.07 * rx, 1.02 * ry], 1), tilt, p.hair, HAIR, arc=(180, 360))
        if p.hair_style == "bun":
            c.circle("head", hc - 1.05 * ry[:, None] * rig["tv"] / UZ[:, None], 0.45 * rx, p.hair, HAIR)
        # hair covers the face progressively as the figure turns away
        cover = np.clip((1 - ct) / 2, 0, 1)
        cw = rx * 1.05 * cover
        cc = hc + np.stack([-st * (1.05 * rx - cw), np.zeros_like(cw)], 1)
        c.ellipse("head", cc, np.stack([cw, 1.02 * ry], 1), tilt, p.hair, HAIR, vis=cw > 0.5)

    def _upper_parts(self, c: _Canvas, g: UpperGarment, p: Person, rig):
        cfg, gr = self.config, self.garments
        U, UZ = rig["U"], rig["UZ"]
        pad = gr.pad
        sh, wa, hp = p.shoulder_hw + pad, p.waist_hw + pad, p.hip_hw + pad
        L = p.torso_len
        hem = g.hem * L
        hem_w = wa + (hp - wa) * min(1.0, max(0.0, (hem - 0.6 * L) / (0.4 * L)))
        nw = 0.5 * p.neck_w + gr.neck_gap
        if g.type == "tank":
            st = g.strap
            shape = [(-nw - st, -0.004), (-nw, -0.004), (0, g.neck_dip * 1.6), (nw, -0.004), (nw + st, -0.004),
                     (nw + st + 0.1 * sh, 0.06), (0.75 * sh, 0.12), (0.9 * sh, 0.15), (wa, 0.6 * L), (hem_w, hem),
                     (-hem_w, hem), (-wa, 0.6 * L), (-0.9 * sh, 0.15), (-0.75 * sh, 0.12), (-nw - st - 0.1 * sh, 0.06)]
        else:
            shape = [(-nw, -0.004), (0, g.neck_dip), (nw, -0.004), (0.82 * sh, 0.008), (sh, 0.035),
                     (0.96 * sh, 0.12), (wa, 0.6 * L), (hem_w, hem), (-hem_w, hem), (-wa, 0.6 * L),
                     (-0.96 * sh, 0.12), (-sh, 0.035), (-0.82 * sh, 0.008)]
        tile, k = _pattern_tile(g, U, cfg)
        body = c.poly("upper", self._local(rig, shape), g.color, UPPER)
        if tile is not None:
            c.pattern(body, tile, rig["neck"], rig["tu"], rig["tv"], k)
        front = rig["cos"]
        if g.type == "jacket":
            ow = g.open_w
            inner = [(-ow, -0.004), (ow, -0.004), (0.55 * ow, hem), (-0.55 * ow, hem)]
            c.poly("upper", self._local(rig, inner), g.inner, UPPER, vis=front > 0.15)
            lapel = [(-ow, -0.004), (-ow - 0.35 * nw, 0.0), (-0.6 * ow, 0.35 * L)]
            shade = tuple(int(v * 0.75) for v in g.color)
            c.poly("upper", self._local(rig, lapel), shade, UPPER, vis=front > 0.15)
            c.poly("upper", self._local(rig, [(-a, b) for a, b in lapel]), shade, UPPER, vis=front > 0.15)
        if g.pattern == "logo":
            r = g.logo_size / 2
            y = g.logo_y
            shapes = {
                "circle": [(r * math.cos(a), y + r * math.sin(a)) for a in np.linspace(0, 2 * np.pi, 12, False)],
                "diamond": [(0, y - r), (r, y), (0, y + r), (-r, y)],
                "triangle": [(0, y - r), (r, y + 0.8 * r), (-r, y + 0.8 * r)],
                "bar": [(-1.4 * r, y - 0.45 * r), (1.4 * r, y - 0.45 * r), (1.4 * r, y + 0.45 * r),
                        (-1.4 * r, y + 0.45 * r)],
            }
            c.poly("upper", self._local(rig, shapes[g.logo_shape]), g.color2, UPPER, vis=front > 0.3)
        if g.type == "tank":
            return
        sleeve_t = max(cfg.min_thickness_px, int(round((p.arm_w + gr.sleeve_pad) * U)))
        for side in ("r", "l"):
            grp = "arm_" + side
            s, e, w = rig[side + "_shoulder"], rig[side + "_elbow"], rig[side + "_wrist"]
            segs = [(s, s + g.sleeve * (e - s))] if g.type == "tshirt" else [(s, e), (e, e + g.sleeve * (w - e))]
            for a, b in segs:
                part = c.capsule(grp, a, b, sleeve_t, g.color, UPPER)
                if tile is not None:
                    d = b - a
                    n = np.linalg.norm(d, axis=1, keepdims=True)
                    v = np.where(n > 1e-6, d / np.maximum(n, 1e-6), np.array([0.0, 1.0]))
                    uvec = np.stack([v[:, 1], -v[:, 0]], 1)
                    c.pattern(part, tile, a, uvec * UZ[:, None], v * UZ[:, None], k)

    def _lower_parts(self, c: _Canvas, g: LowerGarment, p: Person, rig):
        cfg, gr = self.config, self.garments
        U, UZ = rig["U"], rig["UZ"]
        pad = gr.pad
        L = p.torso_len
        wa, hp = p.waist_hw + pad, p.hip_hw + pad
        top = L - 0.05
        if g.type == "skirt":
            kr, kl = rig["r_knee"], rig["l_knee"]
            hr, hl = rig["r_hip"], rig["l_hip"]
            f = g.length
            br, bl = hr + f * (kr - hr), hl + f * (kl - hl)
            mid = (br + bl) / 2
            spread = np.abs(br[:, 0] - bl[:, 0]) / 2 + 0.5 * p.leg_w * UZ
            half = np.maximum(g.flare * hp * UZ * np.maximum(np.abs(rig["cos"]), cfg.depth_ratio), spread)
            tl = self._local(rig, [(-wa, top), (wa, top)])
            pts = np.concatenate([tl, (mid + np.stack([half, 0 * half], 1))[:, None],
                                  (mid - np.stack([half, 0 * half], 1))[:, None]], axis=1)
            c.poly("lower", pts, g.color, LOWER)
            return
        pelvis = [(-wa, top), (wa, top), (hp, L), (0.9 * hp, L + 0.05), (0.0, L + 0.055), (-0.9 * hp, L + 0.05),
                  (-hp, L)]
        c.poly("lower", self._local(rig, pelvis), g.color, LOWER)
        leg_t = max(cfg.min_thickness_px, int(round((p.leg_w + gr.sleeve_pad) * U)))
        for side in ("r", "l"):
            h, k, a = rig[side + "_hip"], rig[side + "_knee"], rig[side + "_ankle"]
            if g.type == "shorts":
                c.capsule("lower", h, h + g.length * (k - h), leg_t, g.color, LOWER)
            else:
                c.capsule("lower", h, k, leg_t, g.color, LOWER)
                c.capsule("lower", k, k + g.length * (a - k), leg_t, g.color, LOWER)


def _canvas_extent(canvas: _Canvas):
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for parts in canvas.groups.values():
        for p in parts:
            if p.kind == "poly":
                pts = p.a[0].astype(np.float64) / canvas.one
                lo, hi = np.minimum(lo, pts.min(0)), np.maximum(hi, pts.max(0))
            elif p.kind == "cap":
                for q in (p.a[0], p.b[0]):
                    q = np.asarray(q, np.float64) / canvas.one
                    lo, hi = np.minimum(lo, q - p.c / 2), np.maximum(hi, q + p.c / 2)
    return lo, hi


# ----------------------------------------------------------------------------- module-level API
DEFAULT_WORLD = MannequinWorld()


def sample_person(seed: int) -> Person:
    return DEFAULT_WORLD.sample_person(seed)


def sample_upper_garment(seed: int, type: str | None = None) -> UpperGarment:
    return DEFAULT_WORLD.sample_upper_garment(seed, type)


def sample_lower_garment(seed: int) -> LowerGarment:
    return DEFAULT_WORLD.sample_lower_garment(seed)


def sample_background(seed: int) -> Background:
    return DEFAULT_WORLD.sample_background(seed)


def sample_motion(seed: int, name: str | None = None) -> Motion:
    return DEFAULT_WORLD.sample_motion(seed, name)


def render_frames(person, upper, lower, background, motion, frames, size=None, start_frame=0):
    return DEFAULT_WORLD.render_frames(person, upper, lower, background, motion, frames, size, start_frame)


def render_swap(person, schedule, lower, background, motion, frames, size=None):
    return DEFAULT_WORLD.render_swap(person, schedule, lower, background, motion, frames, size)


def product_image(garment, size=None) -> np.ndarray:
    return DEFAULT_WORLD.product_image(garment, size)


def sample_triplet(index: int, split: str = "train", frames: int | None = None, size=None) -> Triplet:
    return DEFAULT_WORLD.sample_triplet(index, split, frames, size)
