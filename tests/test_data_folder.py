"""Folder format: synth_folder round trip, validation of bad folders, skip_bad, CLI, WorldDataset."""

import csv
import os
import shutil
import wave

import numpy as np
import pytest
import torch

from fashionchameleon.data import DataError, FolderDataset, WorldDataset
from fashionchameleon.data.folder import META_FILE, read_video, write_video
from fashionchameleon.data.synth import main, synth_folder
from fashionchameleon.data.world import WorldConfig

SIZE = (64, 48)
FRAMES = 5
CLIPS = 8
SEED = 123
MIN_PSNR_DB = 28.0  # crf-18 H.264 at this tiny size (chroma subsampling dominates)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth_folder(str(root), CLIPS, seed=SEED, size=SIZE, frames=FRAMES)
    return root


@pytest.fixture
def folder(base, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(base, dst)
    return dst


def _rows(root):
    with open(root / META_FILE, newline="") as f:
        return list(csv.DictReader(f))


def test_round_trip(base):
    ds = FolderDataset(base, size=SIZE, frames=FRAMES)
    assert len(ds) == CLIPS
    ds.validate()
    world = WorldDataset("train", SIZE, FRAMES, length=CLIPS, seed=SEED)
    for i in (0, CLIPS - 1):
        x, y = ds[i], world[i]
        assert x["reference"].shape == (3,) + SIZE and x["garment"].shape == (3,) + SIZE
        assert x["video"].shape == (3, FRAMES) + SIZE
        assert x["row"] == i and x["prompt"] == y["prompt"]
        for k in ("reference", "garment", "video"):
            assert x[k].dtype == torch.float32 and x[k].min() >= -1 and x[k].max() <= 1
        # PNGs are lossless; the video went through H.264
        assert torch.equal(x["reference"], y["reference"]) and torch.equal(x["garment"], y["garment"])
        mse = ((x["video"] - y["video"]) / 2).pow(2).mean().item()
        assert 10 * np.log10(1 / mse) > MIN_PSNR_DB
    gt = ds.load_gt(2)
    assert gt["masks"].shape == (FRAMES,) + SIZE and gt["keypoints"].shape[:1] == (FRAMES,)
    assert str(gt["split"]) == "train" and int(gt["garment_id"]) != int(gt["ref_garment_id"])


def test_resize_on_read(base):
    """Preprocessing: reference/video fit-cropped, garment letterboxed on white."""
    ds = FolderDataset(base, size=(48, 48), frames=FRAMES)
    x = ds[0]
    assert x["reference"].shape == (3, 48, 48) and x["video"].shape == (3, FRAMES, 48, 48)
    # portrait garment into a square: white bars left and right
    g = x["garment"]
    assert torch.all(g[:, :, 0] == 1) and torch.all(g[:, :, -1] == 1)
    # fewer frames than stored is fine
    assert FolderDataset(base, size=SIZE, frames=1)[0]["video"].shape[1] == 1


def _break(folder):
    """Three distinct problems: missing garment (row 2), corrupt reference (row 3), short video (row 4)."""
    rows = _rows(folder)
    os.remove(folder / rows[2]["cloth_image"])
    (folder / rows[3]["src_image"]).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    frames = read_video(str(folder / rows[4]["video"]), FRAMES)
    write_video(str(folder / rows[4]["video"]), frames[:2], fps=16, crf=18)
    return rows


def test_bad_rows_raise_with_row_and_file(folder):
    rows = _break(folder)
    ds = FolderDataset(folder, size=SIZE, frames=FRAMES)
    ds[1]  # good rows still load
    for row, key, words in ((2, "cloth_image", "missing file"), (3, "src_image", "cannot decode image"),
                            (4, "video", "has 2 frames, need 5")):
        with pytest.raises(DataError) as e:
            ds[row]
        msg = str(e.value)
        assert f"row {row}" in msg and rows[row][key] in msg and words in msg
    with pytest.raises(DataError) as e:
        ds.validate()
    assert all(f"row {r}" in str(e.value) for r in (2, 3, 4))


def test_corrupt_video(folder):
    rows = _rows(folder)
    path = folder / rows[5]["video"]
    # seeded garbage that FFmpeg cannot open (os.urandom sometimes probed as an audio format: a flaky message)
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(DataError, match=r"row 5 .*cannot decode video .*video/000005\.mp4"):
        FolderDataset(folder, size=SIZE, frames=FRAMES)[5]
    # a readable container without a video stream (audio only) gets the same message
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, np.int16).tobytes())
    with pytest.raises(DataError, match=r"row 5 .*cannot decode video .*video/000005\.mp4: no video stream"):
        FolderDataset(folder, size=SIZE, frames=FRAMES)[5]


def test_skip_bad(folder):
    _break(folder)
    ds = FolderDataset(folder, size=SIZE, frames=FRAMES, skip_bad=True)
    assert [r for r, _ in ds.bad_rows] == [2, 3, 4]
    assert all(f"row {r}" in reason for r, reason in ds.bad_rows)
    assert len(ds) == CLIPS - 3
    assert [ds[i]["row"] for i in range(len(ds))] == [0, 1, 5, 6, 7]


def _rewrite(folder, header, rows):
    with open(folder / META_FILE, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_missing_column(folder):
    rows = _rows(folder)
    _rewrite(folder, ["src_image", "cloth_image", "prompt"], [[r["src_image"], r["cloth_image"], r["prompt"]]
                                                               for r in rows])
    with pytest.raises(DataError, match=r"header row is missing column\(s\) \['video'\]"):
        FolderDataset(folder, size=SIZE, frames=FRAMES)


def test_short_row(folder):
    rows = _rows(folder)
    header = ["src_image", "cloth_image", "video", "prompt"]
    table = [[r[k] for k in header] for r in rows]
    table[6] = table[6][:2]  # video and prompt cells missing
    _rewrite(folder, header, table)
    ds = FolderDataset(folder, size=SIZE, frames=FRAMES)
    with pytest.raises(DataError, match=r"row 6 \(meta_data.csv line 8\).*missing value.*'video'"):
        ds[6]
    ok = FolderDataset(folder, size=SIZE, frames=FRAMES, skip_bad=True)
    assert [r for r, _ in ok.bad_rows] == [6] and len(ok) == CLIPS - 1


def test_missing_metadata(tmp_path):
    with pytest.raises(DataError, match="missing metadata file"):
        FolderDataset(tmp_path, size=SIZE, frames=FRAMES)


def test_frame_rule(base):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        FolderDataset(base, size=SIZE, frames=4)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        WorldDataset("train", SIZE, frames=6)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--clips", "2", "--seed", "1", "--size", "32x32", "--frames", "5"]) == 0
    assert len(_rows(out)) == 2 and (out / "video" / "000001.mp4").is_file()
    out2 = tmp_path / "cli2"  # the top-level CLI may pass the arguments without the sub-command
    assert main(["--out", str(out2), "--clips", "1", "--size", "32x32", "--frames", "1", "--split", "test"]) == 0
    assert str(np.load(out2 / "gt" / "000000.npz")["split"]) == "test"
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(out), "--frames", "4"])
    with pytest.raises(ValueError, match="even"):
        main(["synth", "--out", str(out), "--size", "33x32"])


def test_world_dataset_batches():
    ds = WorldDataset("val", SIZE, FRAMES, length=4, seed=7)
    a, b = ds[1], WorldDataset("val", SIZE, FRAMES, length=4, seed=7)[1]
    assert torch.equal(a["video"], b["video"])
    assert not torch.equal(a["video"], WorldDataset("val", SIZE, FRAMES, length=4, seed=8)[1]["video"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["video"].shape == (2, 3, FRAMES) + SIZE and len(batch["prompt"]) == 2
    with pytest.raises(IndexError):
        ds[4]


def test_garment_masks_world_and_folder(base, folder):
    """Both sources give the same upper-garment masks (the garment-region loss weight reads them)."""
    from fashionchameleon.data.world import UPPER

    world = WorldDataset("train", SIZE, FRAMES, length=CLIPS, seed=SEED, garment_masks=True)
    fol = FolderDataset(base, size=SIZE, frames=FRAMES, garment_masks=True)
    w, f = world[3], fol[3]
    assert "garment_mask" not in WorldDataset("train", SIZE, FRAMES, length=CLIPS, seed=SEED)[3]
    assert w["garment_mask"].shape == (FRAMES,) + SIZE
    assert torch.equal(w["garment_mask"], torch.from_numpy(fol.load_gt(3)["masks"] == UPPER).float())
    assert torch.equal(f["garment_mask"], w["garment_mask"])  # same size: the crop is the identity
    assert 0 < w["garment_mask"].mean() < 0.5  # a torso, not the frame
    # a row without a gt sidecar cannot give masks: the error names the row
    rows = _rows(folder)
    rows[1]["gt"] = ""
    with open(folder / META_FILE, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader(), wr.writerows(rows)
    with pytest.raises(DataError, match="row 1"):
        FolderDataset(folder, size=SIZE, frames=FRAMES, garment_masks=True)[1]
    with pytest.raises(DataError, match="row 1"):
        FolderDataset(folder, size=SIZE, frames=FRAMES, body_masks=True)[1]


def test_body_masks_world_and_folder(base):
    """The body-region loss weight's masks: every gt label but background, the same from both sources, and a
    superset of the garment's."""
    from fashionchameleon.data.world import BACKGROUND

    world = WorldDataset("train", SIZE, FRAMES, length=CLIPS, seed=SEED, garment_masks=True, body_masks=True)
    fol = FolderDataset(base, size=SIZE, frames=FRAMES, body_masks=True)
    w, f = world[3], fol[3]
    assert "body_mask" not in WorldDataset("train", SIZE, FRAMES, length=CLIPS, seed=SEED, garment_masks=True)[3]
    assert torch.equal(w["body_mask"], torch.from_numpy(fol.load_gt(3)["masks"] != BACKGROUND).float())
    assert torch.equal(f["body_mask"], w["body_mask"]) and "garment_mask" not in f
    assert torch.all(w["body_mask"] >= w["garment_mask"])
    assert w["garment_mask"].mean() < w["body_mask"].mean() < 0.6


def test_uint8_batches_are_exact(base):
    """The stages ship uint8 batches (teacher.common.Triplets): rendered as uint8 by the datasets, or packed from
    float for any other dataset. Converting back on the trainer's device gives the float32 tensors the datasets
    return, bit for bit, for both sources, with resized (interpolated) masks too."""
    from teacher.common import Triplets, latent_region_weight, mask_values, pixels

    class Plain(torch.utils.data.Dataset):  # no `uint8` switch: Triplets packs its float items
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            return self.ds[i]

    def world():
        return WorldDataset("train", SIZE, FRAMES, length=CLIPS, seed=SEED, garment_masks=True, body_masks=True)

    def fol():
        return FolderDataset(base, size=(48, 40), frames=FRAMES, garment_masks=True, body_masks=True)

    for make in (world, fol):
        raw = make()[2]
        assert raw["video"].dtype == torch.float32  # the datasets' own default is unchanged
        for packed in (Triplets(make())[2], Triplets(Plain(make()))[2]):
            for k in ("reference", "garment", "video"):
                assert packed[k].dtype == torch.uint8 and packed[k].shape == raw[k].shape
                assert torch.equal(pixels(packed[k], "cpu"), raw[k])
            for k in ("garment_mask", "body_mask"):
                assert packed[k].dtype == torch.uint8
                assert torch.equal(mask_values(packed[k]), raw[k])
            lat = (1, 16, 1 + (FRAMES - 1) // 4, 6, 5)
            assert torch.equal(latent_region_weight(packed["garment_mask"][None], lat, 4, 5.0),
                               latent_region_weight(raw["garment_mask"][None], lat, 4, 5.0))
    assert torch.equal(pixels(raw["video"], "cpu", torch.bfloat16), raw["video"].bfloat16())  # float input passes


def _ramp_video(path, n: int, fps: int, step: int = 4) -> None:
    """Frame k is a flat grey of level step * k, so a decoded frame tells which source frame it was."""
    frames = np.stack([np.full((32, 32, 3), step * k, np.uint8) for k in range(n)])
    write_video(str(path), frames, fps=fps, crf=0)


def _levels(video: np.ndarray, step: int = 4) -> list[int]:
    return [int(round(f.mean() / step)) for f in video]


@pytest.mark.parametrize("src_fps,stride", [(48, 2), (72, 3), (24, 1)])
def test_read_video_resamples_by_timestamps(tmp_path, src_fps, stride):
    path = tmp_path / "ramp.mp4"
    _ramp_video(path, 60, src_fps)
    video, picked = read_video(str(path), 17, fps=24, with_indices=True)
    assert picked == [stride * k for k in range(17)]
    assert _levels(video) == picked  # the frames are the ones named
    assert _levels(read_video(str(path), 9)) == list(range(9))  # no fps: the first frames, as before


def test_read_video_upsamples_and_names_a_short_clip(tmp_path):
    path = tmp_path / "slow.mp4"
    _ramp_video(path, 10, 12)
    video, picked = read_video(str(path), 17, fps=24, with_indices=True)
    assert len(video) == 17 and picked == sorted(picked) and set(picked) == set(range(9))
    with pytest.raises(DataError, match=r"lasts 0\.750 s; 17 frames at 12 fps need 1\.333 s"):
        read_video(str(path), 17, fps=12)


def test_folder_fps_resamples_video_and_its_gt_masks(tmp_path):
    root = tmp_path / "d"
    synth_folder(str(root), 2, seed=SEED, size=SIZE, frames=9)  # written at the world's rate
    half_rate = WorldConfig.fps / 2
    plain = FolderDataset(root, size=SIZE, frames=9, garment_masks=True)
    half = FolderDataset(root, size=SIZE, frames=5, garment_masks=True, fps=half_rate)
    a, b = plain[1], half[1]
    assert torch.equal(b["video"], a["video"][:, ::2]) and torch.equal(b["garment_mask"], a["garment_mask"][::2])
    with pytest.raises(DataError, match=r"row 1 \(meta_data.csv line 3\).*lasts 0.500 s"):  # too short at half rate
        FolderDataset(root, size=SIZE, frames=9, fps=half_rate).load(1)
    with pytest.raises(ValueError, match="fps must be > 0"):
        FolderDataset(root, size=SIZE, frames=5, fps=0)


@pytest.mark.parametrize("start,first", [(0.0, 0), (0.5, 25), (1.0, 51)])
def test_read_video_window_start_seeks_to_whole_frames(tmp_path, start, first):
    path = tmp_path / "ramp.mp4"
    _ramp_video(path, 60, 24)
    video, picked = read_video(str(path), 9, start=start, with_indices=True)
    assert picked == list(range(first, first + 9)) and _levels(video) == picked


def test_read_video_window_with_resampling_ends_inside_the_clip(tmp_path):
    path = tmp_path / "ramp48.mp4"
    _ramp_video(path, 60, 48)
    # 1.25 s of clip, a 9-frame window at 12 fps spans 0.667 s: the latest start is 27 frames in
    video, picked = read_video(str(path), 9, fps=12, start=1.0, with_indices=True)
    assert picked == [27 + 4 * k for k in range(9)] and _levels(video) == picked
    mid = read_video(str(path), 9, fps=12, start=0.5, with_indices=True)[1]
    assert 0 < mid[0] < 27 and np.all(np.diff(mid) == 4)


def test_random_clip_windows_move_with_the_epoch_and_repeat_exactly(tmp_path):
    root = tmp_path / "long"
    synth_folder(str(root), 3, seed=SEED, size=SIZE, frames=33)
    ds = FolderDataset(root, size=SIZE, frames=5, clip_start="random", seed=7, garment_masks=True)
    assert ds.epoch_indexed and len(ds) == 3 and len(list(ds)) == 3
    a, again, later = ds[1], FolderDataset(root, size=SIZE, frames=5, clip_start="random", seed=7)[1], ds[1 + 3]
    assert torch.equal(a["video"], again["video"])  # a pure function of (seed, row, epoch)
    assert a["row"] == later["row"] == 1 and not torch.equal(a["video"], later["video"])  # the next epoch moves
    # the masks come from the same source frames as the video
    full = FolderDataset(root, size=SIZE, frames=33, garment_masks=True)[1]
    starts = [int(np.argmin([float((a["video"][:, 0] - full["video"][:, j]).abs().mean()) for j in range(33)]))]
    s = starts[0]
    assert torch.equal(a["garment_mask"], full["garment_mask"][s:s + 5])
    with pytest.raises(IndexError):
        FolderDataset(root, size=SIZE, frames=5)[3]  # only an epoch-indexed dataset takes i >= len


def test_epoch_indexed_sampler_hands_the_epoch_to_the_dataset():
    from fashionchameleon.trainer import EpochSampler

    plain, indexed = EpochSampler(5, seed=3), EpochSampler(5, seed=3, epoch_indexed=True)
    for epoch in (0, 2):
        plain.set_epoch(epoch)
        indexed.set_epoch(epoch)
        assert list(indexed) == [epoch * 5 + i for i in plain]
