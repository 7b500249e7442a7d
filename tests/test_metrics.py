"""Metric functions behave on ground-truth renders; the shipped evaluator segments held-out frames."""

import math

import numpy as np
import pytest
import torch

from fashionchameleon import metrics as M
from fashionchameleon.data.world import MannequinWorld

torch.set_num_threads(1)
WORLD = MannequinWorld()
SIZE = (WORLD.config.height, WORLD.config.width)
# measured with the shipped evaluator on these 24 TEST frames: mIoU 0.85, upper IoU 0.89 (small margin)
MIN_HELDOUT_MIOU = 0.8
MIN_UPPER_IOU = 0.85


def _entities(i, split="test"):
    s = WORLD.triplet_seeds(i, split)
    return (WORLD.sample_person(s["person"]), WORLD.sample_upper_garment(s["upper"]),
            WORLD.sample_upper_garment(s["ref_upper"]), WORLD.sample_lower_garment(s["lower"]),
            WORLD.sample_background(s["background"]), WORLD.sample_motion(s["motion"]))


def _clip(i, frames, start=0, upper_choice=1):
    e = _entities(i)
    return WORLD.render_frames(e[0], e[upper_choice], e[3], e[4], e[5], frames, SIZE, start_frame=start)


def test_fidelity_own_garment_beats_other_garment():
    wins = 0
    for i in range(6):
        p, g, g2, lo, bg, mo = _entities(i)
        v, gt = WORLD.render_frames(p, g, lo, bg, mo, 1, SIZE, start_frame=7 * i)
        own = M.garment_fidelity(v[0], gt["masks"][0], WORLD.product_image(g, SIZE))
        other = M.garment_fidelity(v[0], gt["masks"][0], WORLD.product_image(g2, SIZE))
        assert 0.0 <= other <= 1.0 and 0.0 <= own <= 1.0
        wins += own > other
    assert wins == 6


def test_fidelity_is_nan_without_garment():
    img = np.full(SIZE + (3,), 128, np.uint8)
    mask = np.zeros(SIZE, np.uint8)
    p, g = _entities(0)[:2]
    assert math.isnan(M.garment_fidelity(img, mask, WORLD.product_image(g, SIZE)))


def test_colour_and_texture_similarity_ranges():
    v, gt = _clip(1, 1)
    m = gt["masks"][0] == M.UPPER
    assert M.colour_similarity(v[0], m, v[0], m) == pytest.approx(1.0)
    d = M.texture_descriptor(v[0], m)
    assert M.texture_similarity(d, d) == pytest.approx(1.0)
    solid = np.zeros_like(d)
    assert 0.0 < M.texture_similarity(solid, d + 50.0) < 0.5


def test_continuity_unswapped_clip_is_about_one_and_cut_is_large():
    v, gt = _clip(2, 96)
    lm = M.mask_landmarks(gt["masks"])
    ratios = M.motion_continuity(lm, [30, 48, 70])
    assert np.median(ratios) == pytest.approx(1.0, abs=0.6)
    # artificial jump: splice in frames from much later in the same motion
    v2, gt2 = _clip(2, 48, start=400)
    masks = np.concatenate([gt["masks"][:48], gt2["masks"]])
    cut = M.motion_continuity(M.mask_landmarks(masks), [48])[0]
    assert cut > 4.0
    cut_px = M.continuity_ratio(M.frame_jumps(np.concatenate([v[:48], v2])), [48], 0.25)[0]
    assert cut_px > 4.0


def test_flicker_zero_for_static_clip_and_positive_for_noise():
    v, gt = _clip(3, 1)
    static = np.repeat(v, 8, axis=0)
    masks = np.repeat(gt["masks"], 8, axis=0)
    assert M.temporal_flicker(static, masks) == 0.0
    rng = np.random.default_rng(0)
    noisy = np.clip(static.astype(int) + rng.integers(-10, 11, static.shape), 0, 255).astype(np.uint8)
    assert M.temporal_flicker(noisy, masks) > 1.0


def test_non_target_and_identity_high_on_same_person_low_on_other():
    p, g, g2, lo, bg, mo = _entities(4)
    ref, rgt = WORLD.render_frames(p, g2, lo, bg, mo, 1, SIZE)
    v, gt = WORLD.render_frames(p, g, lo, bg, mo, 1, SIZE, start_frame=20)
    same_nt = M.non_target_preservation(v[0], gt["masks"][0], ref[0], rgt["masks"][0])
    same_id = M.identity_preservation(v[0], gt["masks"][0], ref[0], rgt["masks"][0])
    q = _entities(5)
    o, ogt = WORLD.render_frames(q[0], g, q[3], q[4], q[5], 1, SIZE)
    other_nt = M.non_target_preservation(o[0], ogt["masks"][0], ref[0], rgt["masks"][0])
    assert same_nt["mean"] > 0.9 and same_id["mean"] > 0.9
    assert other_nt["mean"] < same_nt["mean"]


def test_a_lost_body_scores_zero_identity_not_nan():
    """Skin, hair and body the reference shows but the frame lost count as 0 (session 8; before, they dropped out
    of the mean, so a dissolved person could score as well as a kept one). Regions the reference lacks stay NaN."""
    p, g, g2, lo, bg, mo = _entities(4)
    ref, rgt = WORLD.render_frames(p, g2, lo, bg, mo, 1, SIZE)
    rmask = rgt["masks"][0]
    empty = np.zeros_like(rmask)  # the segmenter sees background only
    blank = np.full_like(ref[0], 128)
    ident = M.identity_preservation(blank, empty, ref[0], rmask)
    assert ident["skin"] == 0.0 and ident["height"] == 0.0 and ident["mean"] == 0.0
    nt = M.non_target_preservation(blank, empty, ref[0], rmask)
    assert nt["skin"] == 0.0 and nt["lower"] == 0.0 and not math.isnan(nt["mean"])
    no_hair_ref = np.where(rmask == M.HAIR, M.BACKGROUND, rmask)
    assert math.isnan(M.identity_preservation(ref[0], rmask, ref[0], no_hair_ref)["hair"])


def test_long_drift_and_swap_success():
    f = np.full(1100, np.nan)
    f[30:60] = 0.8
    f[980:1010] = 0.5
    d = M.long_drift(f, 50, 1000, 16)
    assert d["drift"] == pytest.approx(0.3)
    assert M.swap_success(0.7, 0.4) == 1.0 and M.swap_success(0.3, 0.4) == 0.0
    assert math.isnan(M.swap_success(float("nan"), 0.4))


def test_landmarks_shape_and_nan_when_absent():
    v, gt = _clip(6, 3)
    lm = M.mask_landmarks(gt["masks"])
    assert lm.shape == (3, len(M.LANDMARK_NAMES), 2)
    assert not np.isnan(lm[:, M.LANDMARK_NAMES.index("body_centroid")]).any()
    empty = M.mask_landmarks(np.zeros(SIZE, np.uint8))
    assert np.isnan(empty).all()


def test_segmenter_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = M.TinySegmenter(block_channels=(4, 8), height=SIZE[0], width=SIZE[1])
    m.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    m2 = M.load_segmenter(tmp_path)
    v, _ = _clip(0, 2)
    assert np.array_equal(m.eval().predict(v), m2.predict(v))
    # other frame sizes are resized in and out
    assert m2.predict(v[:, ::2, ::2].copy()).shape == (2, SIZE[0] // 2, SIZE[1] // 2)


def test_shipped_evaluator_heldout_iou():
    model = M.load_segmenter()
    acc = M.segmenter_accuracy(model, WORLD, n=24, seed=123)
    assert acc["clean"]["miou"] > MIN_HELDOUT_MIOU
    assert acc["clean"]["iou"]["upper"] > MIN_UPPER_IOU
