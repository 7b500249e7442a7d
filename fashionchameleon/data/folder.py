"""Real-data folder format and the torch datasets (folder on disk, or the world rendered on the fly).

Layout of a dataset folder::

    meta_data.csv   columns: src_image, cloth_image, video, prompt [, gt]   (paths relative to the folder)
    src/*.png       reference image (the person, any garment)
    cloth/*.png     garment product image
    video/*.mp4     the person wearing the garment: the first `frames` frames are used, or, with `fps`, the clip's
                    start resampled to that rate by the frames' timestamps
    gt/*.npz        optional ground-truth sidecar per row (synthetic data only)

Preprocessing (paper §B): garment letterboxed on white; reference and video frames resized to cover and
centre-cropped. Items are dicts of tensors in [-1, 1]: reference [3,H,W], garment [3,H,W], video [3,T,H,W].
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fashionchameleon.imageops import fit_crop, letterbox_white

from .world import BACKGROUND, UPPER, MannequinWorld, check_frames, check_size

META_FILE = "meta_data.csv"
REQUIRED_COLUMNS = ("src_image", "cloth_image", "video", "prompt")
GT_COLUMN = "gt"
# triplet index = seed * SEED_STRIDE + item: one index space shared by WorldDataset and synth_folder
SEED_STRIDE = 1 << 32


class DataError(ValueError):
    """A dataset row (or the metadata file) is unusable; the message names the row and the file."""


@dataclass(frozen=True)
class Row:
    row: int  # 0-based data row; the csv line is row + 2 (header is line 1)
    src_image: str
    cloth_image: str
    video: str
    prompt: str
    gt: str | None


def _where(row: int) -> str:
    return f"row {row} ({META_FILE} line {row + 2})"


def uint8_to_unit(t: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]; the one conversion every loader and the trainer's device side share, so
    uint8 batches converted late are bit-identical to float ones converted early."""
    return t.float().div_(127.5).sub_(1.0)


def image_to_tensor(img: np.ndarray, uint8: bool = False) -> torch.Tensor:
    """uint8 HxWx3 -> float [3, H, W] in [-1, 1] (or the uint8 [3, H, W] itself)."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    return t.contiguous() if uint8 else uint8_to_unit(t)


def video_to_tensor(frames: np.ndarray, uint8: bool = False) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, H, W] in [-1, 1] (or the uint8 [3, T, H, W] itself)."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    return t.contiguous() if uint8 else uint8_to_unit(t)


def read_image(path: str) -> np.ndarray:
    """RGB uint8 HxWx3; raises DataError (without row info) if missing or undecodable."""
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise DataError(f"cannot decode image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _extent(container, stream) -> tuple[float, float, float | None]:
    """(first frame time, duration in seconds, frame rate) from the container's metadata; 0 duration if unknown."""
    rate = float(stream.average_rate or stream.guessed_rate or 0) or None
    tb = float(stream.time_base) if stream.time_base else None
    first = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    if stream.duration and tb:
        dur = float(stream.duration * tb)
    elif container.duration:
        dur = float(container.duration) / 1e6  # AV_TIME_BASE
    elif stream.frames and rate:
        dur = stream.frames / rate
    else:
        dur = 0.0
    return first, dur, rate


def read_video(path: str, frames: int, fps: float | None = None, start: float = 0.0, with_indices: bool = False):
    """`frames` frames as uint8 [T, H, W, 3] RGB; raises DataError if missing, corrupt or too short.

    fps None: consecutive decoded frames. fps given: the clip is resampled to that rate by the frames' own
    timestamps (nearest frame to t0 + k / fps), so footage at 25/30/60 fps trains at the model's rate and motion
    keeps its real speed. `start` in [0, 1] places the window in the clip: 0 = its beginning, 1 = as late as the
    clip allows (random temporal crops of long clips; the container is seeked, not decoded from the start).
    `with_indices` also returns the chosen source frame numbers (to pick matching per-frame sidecars)."""
    import av  # deferred: only needed for folder data

    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"start must be in [0, 1], got {start}")
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}")
    out: list[np.ndarray] = []
    picked: list[int] = []
    last_time = None
    t0 = None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"cannot decode video {path}: no video stream found")
            stream = container.streams.video[0]
            first, dur, rate = _extent(container, stream)
            skip_before = None
            if start > 0 and rate and dur > 0:
                # the last frame starts 1/rate before the end: a resampled window's last target must not pass it
                slack = max(0.0, dur - 1.0 / rate - (frames - 1) / fps) if fps else max(0.0, dur - frames / rate)
                # whole source frames when not resampling, so the window starts on a frame
                offset = start * slack if fps else math.floor(start * slack * rate + 1e-6) / rate
                if offset > 0:
                    skip_before = first + offset - 0.5 / rate
                    container.seek(int((first + offset) / float(stream.time_base)), stream=stream, backward=True)

            def index(n: int, t: float | None) -> int:
                # after a seek the decode count no longer numbers the frames; their timestamps do
                return int(round((t - first) * rate)) if skip_before is not None and t is not None else n

            prev = None  # (index, time, frame) of the frame before the current one
            for n, frame in enumerate(container.decode(video=0)):
                t = frame.time if frame.time is not None else (n / rate if rate else None)
                if skip_before is not None and (t is None or t < skip_before):
                    continue
                if fps is None:
                    out.append(frame.to_ndarray(format="rgb24"))
                    picked.append(index(n, t))
                    if len(out) == frames:
                        break
                    continue
                if t is None:
                    raise DataError(f"cannot resample video {path}: its frames carry no timestamps")
                t0 = t if t0 is None else t0
                cur = (index(n, t), t, frame)
                # every target time up to this frame goes to whichever of prev / cur is nearer
                while len(out) < frames and t0 + len(out) / fps <= t + 1e-9:
                    target = t0 + len(out) / fps
                    best = prev if prev is not None and target - prev[1] < t - target else cur
                    out.append(best[2].to_ndarray(format="rgb24"))
                    picked.append(best[0])
                if len(out) == frames:
                    break
                prev, last_time = cur, t
    except DataError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise DataError(f"cannot decode video {path}: {e}") from e
    if len(out) < frames:
        if fps is None:
            raise DataError(f"video {path} has {len(out)} frames, need {frames}")
        have = 0.0 if last_time is None or t0 is None else last_time - t0
        raise DataError(f"video {path} lasts {have:.3f} s; {frames} frames at {fps:g} fps need "
                        f"{(frames - 1) / fps:.3f} s")
    video = np.stack(out)
    return (video, picked) if with_indices else video


def write_video(path: str, frames: np.ndarray, fps: int, crf: int) -> None:
    """H.264 yuv420p mp4 (even frame sizes only)."""
    import av

    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sizes, got {H}x{W}")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        stream.codec_context.thread_count = 1  # the machine is shared; clips are tiny
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_meta(root: str) -> tuple[list[Row | None], list[tuple[int, str]]]:
    """Parse meta_data.csv. Returns (rows, bad) where unreadable rows are None and listed in bad."""
    path = os.path.join(root, META_FILE)
    if not os.path.isfile(path):
        raise DataError(f"missing metadata file {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{path}: header row is missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
            rows, bad = [], []
            for i, rec in enumerate(reader):
                empty = [c for c in REQUIRED_COLUMNS if rec.get(c) is None or (c != "prompt" and not rec[c].strip())]
                if empty:
                    rows.append(None)
                    bad.append((i, f"{_where(i)} of {path}: missing value for column(s) {empty}"))
                    continue
                gt = rec.get(GT_COLUMN)
                rows.append(Row(i, rec["src_image"].strip(), rec["cloth_image"].strip(), rec["video"].strip(),
                                rec["prompt"], gt.strip() if gt and gt.strip() else None))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot parse {path}: {e}") from e
    return rows, bad


class FolderDataset(Dataset):
    """Triplets from a dataset folder. With skip_bad=True every row is validated up front and bad rows are
    skipped (see `bad_rows`); otherwise a bad row raises DataError when it is read."""

    def __init__(self, root: str, size=(160, 128), frames: int = 9, skip_bad: bool = False,
                 garment_masks: bool = False, body_masks: bool = False, fps: float | None = None,
                 clip_start: str = "first", seed: int = 0):
        self.root = os.fspath(root)
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 (or None: the source's frames as they are), got {fps}")
        if clip_start not in ("first", "random"):
            raise ValueError(f"clip_start must be 'first' or 'random', got {clip_start!r}")
        self.fps = fps  # resample every clip to this rate (see read_video)
        # random: the window moves with (seed, row, epoch); the trainer's sampler then passes epoch * len + i
        self.clip_start, self.seed = clip_start, int(seed)
        self.epoch_indexed = clip_start == "random"
        # per-frame region masks for the loss weights; both need the gt sidecar column on every row
        self.garment_masks, self.body_masks = bool(garment_masks), bool(body_masks)
        self.size = check_size(size)
        self.frames = check_frames(frames)
        self.skip_bad = skip_bad
        # pixels and masks as uint8 (0..255) instead of float: what the training stages ship between processes
        self.uint8 = False
        self.rows, self._parse_bad = read_meta(self.root)
        self.bad_rows: list[tuple[int, str]] = []
        self._index = list(range(len(self.rows)))
        if skip_bad:
            self.validate()

    def __len__(self) -> int:
        return len(self._index)

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _row(self, row: int) -> Row:
        r = self.rows[row]
        if r is None:
            reason = dict(self._parse_bad)[row]
            raise DataError(reason)
        return r

    def window_start(self, row: int, epoch: int) -> float:
        """Where row's window starts in its clip on this visit, in [0, 1] (see read_video)."""
        if self.clip_start == "first":
            return 0.0
        return float(np.random.default_rng([self.seed, row, epoch]).random())

    def load(self, row: int, epoch: int = 0) -> dict:
        """Read and preprocess one csv row (by its row number), raising DataError naming the row."""
        r = self._row(row)
        H, W = self.size
        try:
            ref = read_image(self._path(r.src_image))
            cloth = read_image(self._path(r.cloth_image))
            start = self.window_start(row, epoch)
            try:
                video, picked = read_video(self._path(r.video), self.frames, self.fps, start, with_indices=True)
            except DataError:
                if start == 0:
                    raise
                # a container whose duration overstates its frames: the validated window at the start stands in
                video, picked = read_video(self._path(r.video), self.frames, self.fps, 0.0, with_indices=True)
        except DataError as e:
            raise DataError(f"{_where(row)}: {e}") from e
        video = np.stack([fit_crop(f, H, W) for f in video])
        item = {
            "reference": image_to_tensor(fit_crop(ref, H, W), self.uint8),
            "garment": image_to_tensor(letterbox_white(cloth, H, W), self.uint8),
            "video": video_to_tensor(video, self.uint8),
            "prompt": r.prompt,
            "row": row,
        }
        if self.garment_masks or self.body_masks:
            masks = self._gt_masks(row, picked)
            if self.garment_masks:
                item["garment_mask"] = self._region(masks == UPPER)
            if self.body_masks:
                item["body_mask"] = self._region(masks != BACKGROUND)
        return item

    def _gt_masks(self, row: int, picked: list[int]) -> np.ndarray:
        """The sidecar's masks of the video frames that were picked (`read_video`'s indices)."""
        masks = self.load_gt(row).get("masks")
        if masks is None or masks.ndim != 3 or len(masks) <= max(picked):
            raise DataError(f"{_where(row)}: gt sidecar has no per-frame 'masks' for source frames up to "
                            f"{max(picked)}")
        return masks[picked]

    def _region(self, region: np.ndarray) -> torch.Tensor:
        """A boolean region `[T, H, W]` of the gt label masks -> 0..1, cropped like the video."""
        H, W = self.size
        m = np.stack([fit_crop(m, H, W)[..., 0] for m in region.astype(np.uint8) * 255])
        return torch.from_numpy(m if self.uint8 else m.astype(np.float32) / 255.0)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self._index) and not (self.epoch_indexed and i >= 0):
            raise IndexError(f"item {i} of {len(self._index)}")
        epoch, k = divmod(i, len(self._index))  # i >= len only from an epoch-indexed sampler
        return self.load(self._index[k], epoch)

    def __iter__(self):  # one epoch, even when epoch-indexed
        return (self[i] for i in range(len(self)))

    def load_gt(self, row: int) -> dict:
        """The ground-truth sidecar of a row as a dict of arrays (synthetic folders only)."""
        r = self._row(row)
        if r.gt is None:
            raise DataError(f"{_where(row)}: no '{GT_COLUMN}' entry")
        path = self._path(r.gt)
        if not os.path.isfile(path):
            raise DataError(f"{_where(row)}: missing file {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise DataError(f"{_where(row)}: cannot read {path}: {e}") from e

    def check_row(self, row: int) -> str | None:
        """None if the row is usable, else the reason (decodes the images and the first `frames` frames)."""
        try:
            r = self._row(row)
            for rel in (r.src_image, r.cloth_image):
                read_image(self._path(rel))
            read_video(self._path(r.video), self.frames, self.fps)
            if r.gt is not None and not os.path.isfile(self._path(r.gt)):
                raise DataError(f"missing file {self._path(r.gt)}")
        except DataError as e:
            msg = str(e)
            return msg if msg.startswith("row ") else f"{_where(row)}: {msg}"
        return None

    def validate(self, raise_errors: bool | None = None) -> list[tuple[int, str]]:
        """Check every row. Skips bad rows when skip_bad, else raises one DataError listing all of them."""
        bad = [(i, reason) for i in range(len(self.rows)) if (reason := self.check_row(i)) is not None]
        if raise_errors is None:
            raise_errors = not self.skip_bad
        if bad and raise_errors:
            raise DataError(f"{len(bad)} bad row(s) in {self.root}:\n" + "\n".join(m for _, m in bad))
        if self.skip_bad:
            self.bad_rows = bad
            skip = {i for i, _ in bad}
            self._index = [i for i in range(len(self.rows)) if i not in skip]
        return bad


class WorldDataset(Dataset):
    """Mannequin-world triplets rendered on the fly, in the FolderDataset item format."""

    def __init__(self, split: str = "train", size=(160, 128), frames: int = 9, length: int = 10_000, seed: int = 0,
                 world: MannequinWorld | None = None, garment_masks: bool = False, body_masks: bool = False):
        if not 0 <= length < SEED_STRIDE:
            raise ValueError(f"length must be in [0, 2**32), got {length}")
        self.split, self.size, self.frames = split, check_size(size), check_frames(frames)
        self.length, self.seed = int(length), int(seed)
        self.garment_masks, self.body_masks = bool(garment_masks), bool(body_masks)
        self.uint8 = False  # as FolderDataset.uint8
        self.world = world or MannequinWorld()
        self.world.triplet_seeds(0, split)  # validates the split name early

    def __len__(self) -> int:
        return self.length

    def triplet_index(self, i: int) -> int:
        return self.seed * SEED_STRIDE + int(i)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        tr = self.world.sample_triplet(self.triplet_index(i), self.split, self.frames, self.size)
        item = {
            "reference": image_to_tensor(tr.reference, self.uint8),
            "garment": image_to_tensor(tr.garment, self.uint8),
            "video": video_to_tensor(tr.video, self.uint8),
            "prompt": tr.prompt,
            "row": int(i),
        }
        for key, on, region in (("garment_mask", self.garment_masks, lambda m: m == UPPER),
                                ("body_mask", self.body_masks, lambda m: m != BACKGROUND)):
            if on:
                r = torch.from_numpy(region(tr.gt["masks"]))  # [T, H, W]
                item[key] = r.to(torch.uint8).mul_(255) if self.uint8 else r.float()
        return item
