"""Mannequin world: determinism, the mismatch rule, splits, frame-count rule, masks, product images."""

import cv2
import numpy as np
import pytest

from fashionchameleon.data import world as W

SIZE = (96, 80)
FRAMES = 5
COLOUR_TOL = 8  # AA slivers inside concave polygons blend faintly with what lies beneath
UNION_DILATE = 5  # px: cv2 anti-aliased fills reach up to 2 px past the pixel-centre mask


@pytest.fixture(scope="module")
def world():
    return W.MannequinWorld()


def _first(world, sampler, pred, start=0):
    for s in range(start, start + 5000):
        e = sampler(s)
        if pred(e):
            return e
    raise AssertionError("no entity matched")


def test_same_seed_same_bytes(world):
    a = world.sample_triplet(7, "train", FRAMES, SIZE)
    b = W.MannequinWorld().sample_triplet(7, "train", FRAMES, SIZE)
    assert a.video.tobytes() == b.video.tobytes()
    assert a.garment.tobytes() == b.garment.tobytes()
    assert a.reference.tobytes() == b.reference.tobytes()
    assert a.prompt == b.prompt
    c = world.sample_triplet(8, "train", FRAMES, SIZE)
    assert a.video.tobytes() != c.video.tobytes()


def test_triplet_fields(world):
    t = world.sample_triplet(1, "val", FRAMES, SIZE)
    H, Wd = SIZE
    assert t.video.shape == (FRAMES, H, Wd, 3) and t.video.dtype == np.uint8
    assert t.garment.shape == (H, Wd, 3) and t.reference.shape == (H, Wd, 3)
    assert t.gt["keypoints"].shape == (FRAMES, len(W.KEYPOINT_NAMES), 2)
    assert t.gt["masks"].shape == (FRAMES, H, Wd) and t.gt["masks"].max() < len(W.LABELS)
    assert t.prompt == W.MOTION_PROMPTS[t.gt["motion"]]
    # motion is smooth: keypoints move by a fraction of the frame per step
    step = np.abs(np.diff(t.gt["keypoints"], axis=0)).max()
    assert step < 0.1 * H


@pytest.mark.parametrize("index", range(12))
def test_mismatch_rule(world, index):
    t = world.sample_triplet(index, "train", FRAMES, SIZE)
    g = t.gt
    assert g["garment_id"] != g["ref_garment_id"]
    assert world.sample_upper_garment(g["ref_garment_id"], type=g["upper_type"]).type == g["upper_type"]
    assert world.sample_upper_garment(g["garment_id"]).type == g["upper_type"]
    union = ((g["masks"][0] == W.UPPER) | (g["reference_mask"] == W.UPPER)).astype(np.uint8)
    region = cv2.dilate(union, np.ones((UNION_DILATE, UNION_DILATE), np.uint8)).astype(bool)
    diff = np.abs(t.reference.astype(int) - t.video[0].astype(int)).max(axis=2)
    # outside the garment region only anti-aliased edges of occluders (arms over the hidden garment) may differ
    k = np.ones((3, 3), np.uint8)
    edge = np.zeros(SIZE, bool)
    for m in (g["masks"][0], g["reference_mask"]):
        edge |= cv2.dilate(m, k) != cv2.erode(m, k)
    outside = ~region & (diff > 0)
    assert not (outside & ~edge).any(), "reference differs outside the upper-garment region"
    assert outside.sum() <= 0.05 * union.sum()
    # outside the masks themselves (i.e. away from AA edges) the rest of the scene is identical too
    assert (g["masks"][0][~region] == g["reference_mask"][~region]).all()
    assert (diff[union.astype(bool)] > 0).mean() > 0.3, "reference garment should actually differ"


def test_split_disjoint(world):
    ids = {}
    for split in W.SPLIT_SEEDS:
        got = {k: set() for k in ("person", "upper", "ref_upper", "lower", "background", "motion")}
        for i in range(300):
            for k, v in world.triplet_seeds(i, split).items():
                got[k].add(v)
                assert W.split_of_seed(v) == split
        ids[split] = got
    for k in ("person", "upper", "lower", "background"):
        garments = ids["train"][k] | (ids["train"]["ref_upper"] if k == "upper" else set())
        for held in ("val", "test"):
            assert not garments & ids[held][k]
    lo_tr, hi_tr = W.TRAIN_SEEDS
    for lo, hi in (W.VAL_SEEDS, W.TEST_SEEDS):
        assert hi_tr <= lo or hi <= lo_tr
    # different seeds give different garments (not just different ids)
    tr = {W.MannequinWorld().sample_upper_garment(s).color for s in list(ids["train"]["upper"])[:50]}
    te = {W.MannequinWorld().sample_upper_garment(s).color for s in list(ids["test"]["upper"])[:50]}
    assert len(tr) == 50 and not tr & te


@pytest.mark.parametrize("frames", [0, 2, 3, 4, 6, 8, 10])
def test_frame_rule_rejects(world, frames):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        world.sample_triplet(0, "train", frames, SIZE)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_frame_rule_accepts(world, frames):
    assert world.sample_triplet(0, "train", frames, (32, 32)).video.shape[0] == frames


def test_masks_match_pixels(world):
    person = world.sample_person(3)
    upper = _first(world, lambda s: world.sample_upper_garment(s, type="tshirt"), lambda g: g.pattern == "solid")
    lower = world.sample_lower_garment(4)
    bg = _first(world, world.sample_background, lambda b: b.kind == "solid")
    motion = world.sample_motion(5, "swing_arms")
    frames, gt = world.render_frames(person, upper, lower, bg, motion, FRAMES, (160, 128))
    kernel = np.ones((UNION_DILATE, UNION_DILATE), np.uint8)
    for t in range(FRAMES):
        img, m = frames[t].astype(int), gt["masks"][t]
        # eyes are labelled skin, hence the lower skin fraction
        for label, colour, min_frac in ((W.UPPER, upper.color, 1.0), (W.LOWER, lower.color, 1.0),
                                        (W.BACKGROUND, bg.color, 1.0), (W.SKIN, person.skin, 0.9),
                                        (W.SHOES, person.shoes, 1.0)):
            inner = cv2.erode((m == label).astype(np.uint8), kernel).astype(bool)
            assert inner.sum() > 0, W.LABELS[label]
            match = (np.abs(img[inner] - np.array(colour)).max(axis=1) <= COLOUR_TOL).mean()
            assert match >= min_frac, (W.LABELS[label], match)
        assert (m == W.HAIR).sum() > 0


@pytest.mark.parametrize("size", [(128, 128), (160, 128), (480, 832), (64, 200)])
def test_every_size_and_white_border(world, size):
    H, Wd = size
    for g in (world.sample_upper_garment(11), world.sample_upper_garment(12, type="jacket"),
              world.sample_lower_garment(13)):
        img = world.product_image(g, size)
        assert img.shape == (H, Wd, 3)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == 255).all()
        assert (img != 255).any(axis=2).mean() > 0.1  # the garment is there
        ys, xs = np.nonzero((img != 255).any(axis=2))
        assert abs((ys.min() + ys.max()) / 2 - H / 2) < 2 and abs((xs.min() + xs.max()) / 2 - Wd / 2) < 2
    t = world.sample_triplet(2, "test", 1, size)
    assert t.video.shape == (1, H, Wd, 3)
    kp = t.gt["keypoints"][0]
    assert (kp[:, 0] > 0).all() and (kp[:, 0] < Wd).all() and (kp[:, 1] > 0).all() and (kp[:, 1] < H).all()


def test_patterns_move_with_torso(world):
    """Stripes are drawn in garment coordinates: a chest strip sampled relative to the neck stays the same
    while the figure walks, but differs when sampled at a fixed frame position."""
    person, lower, bg = world.sample_person(1), world.sample_lower_garment(1), world.sample_background(1)
    g = _first(world, lambda s: world.sample_upper_garment(s, type="tank"),
               lambda g: g.pattern == "vstripes" and g.period > 0.05)
    m = world.sample_motion(2, "walk_right")
    frames, gt = world.render_frames(person, g, lower, bg, m, 9, (160, 128))
    kp = gt["keypoints"]
    neck, pelvis = W.KEYPOINT_NAMES.index("neck"), W.KEYPOINT_NAMES.index("pelvis")
    strip = (16, 1)

    def sample(t, at):
        y = at[1] + 0.4 * (kp[t, pelvis, 1] - kp[t, neck, 1])
        return cv2.getRectSubPix(frames[t].astype(np.float32), strip, (float(at[0]), float(y))).astype(float)

    a, b = 0, 8
    assert abs(kp[b, neck, 0] - kp[a, neck, 0]) >= 2  # the figure moved sideways
    ref = sample(a, kp[a, neck])
    followed = np.abs(sample(b, kp[b, neck]) - ref).mean()
    fixed = np.abs(sample(b, kp[a, neck]) - ref).mean()
    assert followed < 0.5 * fixed


def test_render_swap_matches_segments(world):
    person, lower, bg = world.sample_person(21), world.sample_lower_garment(21), world.sample_background(21)
    m = world.sample_motion(21, "turn")
    g1, g2 = world.sample_upper_garment(31), world.sample_upper_garment(32)
    video, gt = world.render_swap(person, [(0, g1), (6, g2)], lower, bg, m, 13, SIZE)
    first, _ = world.render_frames(person, g1, lower, bg, m, 13, SIZE)
    second, _ = world.render_frames(person, g2, lower, bg, m, 7, SIZE, start_frame=6)
    assert (video[:6] == first[:6]).all() and (video[6:] == second).all()
    assert list(gt["garment_ids"]) == [g1.id] * 6 + [g2.id] * 7
    assert gt["masks"].shape == (13,) + SIZE


def test_coverage_of_catalogue(world):
    types = {world.sample_upper_garment(s).type for s in range(200)}
    patterns = {world.sample_upper_garment(s).pattern for s in range(200)}
    lowers = {world.sample_lower_garment(s).type for s in range(100)}
    bgs = {world.sample_background(s).kind for s in range(100)}
    motions = {world.sample_motion(s).name for s in range(200)}
    assert types == set(W.UPPER_TYPES) and patterns == set(W.PATTERNS) and lowers == set(W.LOWER_TYPES)
    assert bgs == set(W.BACKGROUND_KINDS) and motions == set(W.MOTIONS)
    with pytest.raises(ValueError):
        world.sample_upper_garment(0, type="hat")
