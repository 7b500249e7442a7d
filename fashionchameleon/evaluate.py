"""Held-out garment-swap benchmark on the mannequin world (docs/EVAL.md).

    python -m fashionchameleon.evaluate --policy disentangle --cases 100 --json out.json [--checkpoint DIR] [--smoke]

A case = a TEST-split person/lower garment/background/motion, a reference image (the person in garment A at
frame 0), a sequence of 2-3 TEST-split upper garments and the frames where each swap is requested. `run_case`
streams it through a `StreamingSession`, requesting each swap when the stream reaches its frame (it takes effect
at the next chunk boundary; the frame where `swap_generation` changes is recorded) and scores every segment with
the evaluation models of `fashionchameleon.metrics`. `--oracle` scores the ground-truth render of the same
schedule instead (the metrics' ceiling).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .configs import get_preset
from .data.world import SPLIT_SEEDS, MannequinWorld
from .reschedule import DEFAULT_POLICY


@dataclass(frozen=True)
class BenchConfig:
    split: str = "test"
    short_frames: int = 192
    long_frames: int = 1008  # >= drift_late: long cases measure drift
    long_every: int = 10  # every long_every-th case is a long one
    garments: tuple[int, int] = (2, 3)  # streamed garments per short case (inclusive range)
    swap_jitter: float = 0.15  # swap frames move up to this fraction of a segment
    smoke_cases: int = 2
    smoke_frames: int = 64
    drift_early: int = 50
    drift_late: int = 1000
    drift_window: int = 16  # frames averaged at each drift point
    settle_chunks: int = 1  # segment metrics skip this many chunks after each swap (the model needs a chunk)
    score_stride: int = 2  # per-frame appearance metrics use every n-th frame of a segment


@dataclass
class Case:
    index: int
    split: str
    person: int
    lower: int
    background: int
    motion: int
    reference_garment: int  # garment A, worn in the reference image
    garments: list[int]  # streamed upper garments, in order
    swap_frames: list[int]  # requested frame of garments[1:]
    frames: int
    prompt: str
    seed: int
    long: bool = False

    @property
    def garment_ids(self) -> list[str]:
        return [f"upper-{g}" for g in self.garments]


def build_cases(n: int, seed: int = 0, cfg: BenchConfig = BenchConfig(), world: MannequinWorld | None = None,
                frames: int | None = None) -> list[Case]:
    """n deterministic cases from `cfg.split` seeds; every `long_every`-th case is long (A -> B -> A schedule so
    drift compares the same garment at frames ~50 and ~1000). `frames` overrides the short length."""
    world = world or MannequinWorld()
    lo, hi = SPLIT_SEEDS[cfg.split]
    cases = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        s = world.triplet_seeds(int(rng.integers(0, 1 << 31)), cfg.split)
        first = world.sample_upper_garment(s["upper"])
        long = frames is None and cfg.long_every > 0 and i % cfg.long_every == cfg.long_every - 1
        if long:
            k, T = 3, cfg.long_frames
        else:
            k, T = int(rng.integers(cfg.garments[0], cfg.garments[1] + 1)), frames or cfg.short_frames
        garments = [first.id]
        while len(garments) < k:
            g = lo + int(rng.integers(0, hi - lo))
            if long and len(garments) == 2:
                g = first.id
            elif g in garments or g == s["ref_upper"]:
                continue
            garments.append(g)
        seg = T / k
        swaps = [int(round(j * seg + rng.uniform(-cfg.swap_jitter, cfg.swap_jitter) * seg)) for j in range(1, k)]
        cases.append(Case(index=i, split=cfg.split, person=s["person"], lower=s["lower"], background=s["background"],
                          motion=s["motion"], reference_garment=s["ref_upper"], garments=garments, swap_frames=swaps,
                          frames=T, prompt=world.sample_motion(s["motion"]).prompt,
                          seed=int(rng.integers(0, 1 << 31)), long=long))
    return cases


class CaseAssets:
    """Entities and images of a case at one frame size."""

    def __init__(self, case: Case, world: MannequinWorld, size: tuple[int, int]):
        self.world, self.case, self.size = world, case, size
        self.person = world.sample_person(case.person)
        self.lower = world.sample_lower_garment(case.lower)
        self.background = world.sample_background(case.background)
        self.motion = world.sample_motion(case.motion)
        ref_upper = world.sample_upper_garment(case.reference_garment, type=self._first().type)
        self.ref_upper = ref_upper
        self.uppers = [self._first()] + [world.sample_upper_garment(g) for g in case.garments[1:]]
        ref, gt = world.render_frames(self.person, ref_upper, self.lower, self.background, self.motion, 1, size)
        self.reference, self.reference_mask = ref[0], gt["masks"][0]
        self.products = [world.product_image(g, size) for g in self.uppers]
        self.reference_product = world.product_image(ref_upper, size)

    def _first(self):
        return self.world.sample_upper_garment(self.case.garments[0])

    def ground_truth(self, swap_frames=None):
        """GT render of the schedule (swaps exactly at `swap_frames`, default the requested ones)."""
        swaps = self.case.swap_frames if swap_frames is None else swap_frames
        schedule = [(0, self.uppers[0])] + list(zip(swaps, self.uppers[1:]))
        return self.world.render_swap(self.person, schedule, self.lower, self.background, self.motion,
                                      self.case.frames, self.size)


class Evaluator:
    """The evaluation models + metric settings used to score a video."""

    def __init__(self, checkpoint=None, metric_cfg: M.MetricConfig = M.DEFAULT_METRICS):
        self.path = Path(checkpoint) if checkpoint else M.DEFAULT_EVALUATOR
        self.segmenter = M.load_segmenter(self.path)
        self.cfg = metric_cfg

    def accuracy(self) -> dict | None:
        f = self.path / "metrics.json"
        return json.loads(f.read_text()).get("heldout_test") if f.is_file() else None

    def masks(self, frames: np.ndarray) -> np.ndarray:
        return self.segmenter.predict(frames)


def _nanmean(v) -> float:
    v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else float("nan")


def score_video(frames: np.ndarray, swap_frames: list[int], assets: CaseAssets, evaluator: Evaluator,
                settle: int, cfg: BenchConfig = BenchConfig(), gt_masks: np.ndarray | None = None,
                restore_frames: list[int] | None = None) -> dict:
    """All metrics of one streamed (or GT) video whose garment changes at `swap_frames` (actual frames).

    `gt_masks`: the world's label maps of the same schedule; they add `body_iou`, the IoU of the predicted and
    the ground-truth person silhouettes (0 where either is empty). It falls when the body dissolves, when garment
    colour floods its surroundings, or when the motion leaves the prompt's path; colour metrics miss the first
    two. `restore_frames`: frames where the policy changed the cache without a swap (`anchored`); their landmark
    jumps are scored like the swaps' (`continuity_kp_restore`)."""
    mc = evaluator.cfg
    T = len(frames)
    masks = evaluator.masks(frames)
    ref, ref_mask = assets.reference, evaluator.masks(assets.reference)
    garments = [M.GarmentReference(p, mc) for p in assets.products]
    ref_garment = M.GarmentReference(assets.reference_product, mc)
    bounds = [0] + list(swap_frames) + [T]
    fid_cur = np.full(T, np.nan)  # per-frame fidelity vs the garment that should be worn (for drift)
    segments = []
    for j in range(len(bounds) - 1):
        a, b = bounds[j], bounds[j + 1]
        cur = garments[j]
        prev = garments[j - 1] if j else ref_garment
        idx = list(range(min(a + settle, b - 1), b, cfg.score_stride)) if b > a else []
        fc, col, pat, fp, nt, ident, body = [], [], [], [], [], [], []
        for t in idx:
            f, c, p = M.garment_fidelity(frames[t], masks[t], cur, mc, parts=True)
            fid_cur[t] = f
            fc.append(f), col.append(c), pat.append(p)
            fp.append(M.garment_fidelity(frames[t], masks[t], prev, mc))
            nt.append(M.non_target_preservation(frames[t], masks[t], ref, ref_mask, mc))
            ident.append(M.identity_preservation(frames[t], masks[t], ref, ref_mask, mc))
            if gt_masks is not None:
                iou = M.silhouette_iou(masks[t], gt_masks[t])
                body.append(0.0 if math.isnan(iou) else iou)
        fid, fid_prev = _nanmean(fc), _nanmean(fp)
        segments.append({
            "garment_id": assets.case.garment_ids[j], "start": a, "end": b, "scored_frames": len(idx),
            "fidelity": fid, "colour": _nanmean(col), "pattern": _nanmean(pat),
            "fidelity_prev": fid_prev, "success": M.swap_success(fid, fid_prev),
            "non_target": _nanmean([d["mean"] for d in nt]),
            "non_target_per_class": {k: _nanmean([d[k] for d in nt]) for k in M.NON_TARGET},
            "identity": _nanmean([d["mean"] for d in ident]),
            "body_iou": _nanmean(body),
            "flicker": M.temporal_flicker(frames[a:b], masks[a:b], mc) if b - a > 1 else float("nan"),
        })
    landmarks = M.mask_landmarks(masks, mc)
    out = {
        "segments": segments,
        "continuity_kp": M.motion_continuity(landmarks, swap_frames, mc),
        "continuity_px": M.continuity_ratio(M.frame_jumps(frames), swap_frames, mc.jump_floor_px_level),
        "flicker": M.temporal_flicker(frames, masks, mc),
    }
    if restore_frames:
        out["continuity_kp_restore"] = M.motion_continuity(landmarks, [f for f in restore_frames if f < T], mc)
    if T > cfg.drift_late:
        # drift needs per-frame fidelity around both points, not only every score_stride-th frame
        for t in list(range(cfg.drift_early - cfg.drift_window + 1, cfg.drift_early + 1)) + \
                list(range(cfg.drift_late - cfg.drift_window + 1, cfg.drift_late + 1)):
            j = int(np.searchsorted(bounds, t, side="right")) - 1
            if 0 <= t < T and math.isnan(fid_cur[t]):
                fid_cur[t] = M.garment_fidelity(frames[t], masks[t], garments[j], mc)
        out["drift"] = M.long_drift(fid_cur, cfg.drift_early, cfg.drift_late, cfg.drift_window)
    return out


def settle_frames(engine=None) -> int:
    """Pixel frames per chunk (of the engine, or of the shipped "tiny" preset for the oracle)."""
    p = engine.preset if engine is not None else get_preset("tiny")
    return p.temporal_factor * p.stream.chunk_frames


def run_case(engine, case: Case, policy: str, evaluator: Evaluator, cfg: BenchConfig = BenchConfig(),
             world: MannequinWorld | None = None, keep_frames: bool = False) -> dict:
    """Stream one case with `policy` and score it. Swaps are requested once the stream has produced the requested
    frame; the actual swap frame is where `Frame.swap_generation` first increments."""
    world = world or MannequinWorld()
    assets = CaseAssets(case, world, (engine.height, engine.width))
    session = engine.new_session(policy)
    t0 = time.perf_counter()
    session.begin(assets.reference, assets.products[0], case.prompt, case.seed, garment_id=case.garment_ids[0])
    images, gens, nxt = [], [], 0
    while len(images) < case.frames:
        if nxt < len(case.swap_frames) and len(images) >= case.swap_frames[nxt]:
            session.request_swap(assets.products[nxt + 1], case.garment_ids[nxt + 1])
            nxt += 1
        for fr in session.step():
            images.append(fr.image)
            gens.append(fr.swap_generation)
    gen_s = time.perf_counter() - t0
    stats = session.stats()
    latencies = list(session.swap_latencies)
    restores = list(session.restore_frames)
    session.close()
    frames = np.stack(images[:case.frames])
    gens = np.asarray(gens[:case.frames])
    actual = [int(i) for i in np.nonzero(np.diff(gens))[0] + 1]
    t1 = time.perf_counter()
    _, gt = assets.ground_truth(actual)  # the same schedule, swaps where the stream actually swapped
    res = score_video(frames, actual, assets, evaluator, settle_frames(engine) * cfg.settle_chunks, cfg,
                      gt_masks=gt["masks"], restore_frames=restores)
    res.update(case=case.index, long=case.long, frames=int(len(frames)), policy=policy,
               requested_swaps=list(case.swap_frames), actual_swaps=actual, restore_frames=restores,
               swap_delay_frames=[a - r for a, r in zip(actual, case.swap_frames)],
               fps=stats["fps"], generate_s=gen_s, score_s=time.perf_counter() - t1,
               swap_latency_s=latencies)
    if keep_frames:
        res["video"] = frames
    return res


def stream_health(engine, reference: np.ndarray, garment: np.ndarray, prompt: str, frames: int,
                  evaluator: Evaluator, window: int = 16, seed: int = 0, policy: str = DEFAULT_POLICY,
                  swap_garments: list[np.ndarray] = (), swap_every: int = 0) -> dict:
    """Stream `frames` frames and describe the first window after the first chunk ("early") and the last window
    ("late"): person area (evaluator masks), frame contrast (pixel std), sharpness (mean |Laplacian|), fidelity to
    the garment worn then, and identity (skin/hair colours against the reference). A collapsing stream loses the
    person, its contrast or its garment late. With `swap_every`, a swap to the next of `[garment, *swap_garments]`
    (cyclically) is requested every `swap_every` frames; "swaps" lists the frames where they took effect."""
    import cv2

    worn = [garment, *swap_garments]
    session = engine.new_session(policy)
    session.begin(reference, garment, prompt, seed)
    images, gens, nxt = [], [], swap_every
    while len(images) < frames:
        if swap_every and len(swap_garments) and len(images) >= nxt:
            session.request_swap(worn[(nxt // swap_every) % len(worn)])
            nxt += swap_every
        for f in session.step():
            images.append(f.image)
            gens.append(f.swap_generation)
    session.close()
    video = np.stack(images[:frames])
    gens = gens[:frames]
    refs = [M.GarmentReference(w, evaluator.cfg) for w in worn]
    ref_mask = evaluator.masks(reference)
    start = settle_frames(engine)

    def describe(a: int, b: int) -> dict:
        clip = video[a:b]
        masks = evaluator.masks(clip)
        lap = [np.abs(cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean() for f in clip]
        return {"start": a, "end": b, "person_area": float((masks != 0).mean()),
                "contrast": float(clip.reshape(len(clip), -1, 3).std(axis=1).mean()),
                "sharpness": float(np.mean(lap)),
                "fidelity": _nanmean([M.garment_fidelity(f, m, refs[gens[a + i] % len(worn)], evaluator.cfg)
                                      for i, (f, m) in enumerate(zip(clip, masks))]),
                "identity": _nanmean([M.identity_preservation(f, m, reference, ref_mask, evaluator.cfg)["mean"]
                                      for f, m in zip(clip, masks)])}

    swaps = [int(i) for i in np.nonzero(np.diff(gens))[0] + 1]
    return {"frames": int(len(video)), "finite": bool(np.isfinite(video).all()), "policy": policy, "swaps": swaps,
            "early": describe(start, start + window), "late": describe(frames - window, frames)}


def run_oracle(case: Case, evaluator: Evaluator, size: tuple[int, int], settle: int,
               cfg: BenchConfig = BenchConfig(), world: MannequinWorld | None = None) -> dict:
    """Score the ground-truth render of the case (swaps exactly at the requested frames)."""
    assets = CaseAssets(case, world or MannequinWorld(), size)
    frames, gt = assets.ground_truth()
    t1 = time.perf_counter()
    res = score_video(frames, list(case.swap_frames), assets, evaluator, settle, cfg, gt_masks=gt["masks"])
    res.update(case=case.index, long=case.long, frames=int(len(frames)), policy="oracle",
               requested_swaps=list(case.swap_frames), actual_swaps=list(case.swap_frames), swap_delay_frames=[],
               fps=float("nan"), generate_s=0.0, score_s=time.perf_counter() - t1, swap_latency_s=[])
    return res


SUMMARY_KEYS = ("fidelity", "fidelity_first", "fidelity_after_swap", "initial_success", "swap_success",
                "non_target", "identity", "body_iou", "continuity_kp", "continuity_kp_restore", "continuity_px",
                "flicker", "drift", "fidelity_early", "fidelity_late", "swap_delay_frames", "fps", "swap_latency_s",
                "case_seconds")


def _stat(values) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if not len(v):
        return {"mean": None, "std": None, "median": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)), "n": int(len(v))}


def aggregate(results: list[dict]) -> dict:
    """Mean / std / median / n of every metric; swap metrics pool all swaps, segment metrics all segments."""
    col: dict[str, list] = {k: [] for k in SUMMARY_KEYS}
    for r in results:
        segs = r["segments"]
        for j, s in enumerate(segs):
            col["fidelity"].append(s["fidelity"])
            col["fidelity_first" if j == 0 else "fidelity_after_swap"].append(s["fidelity"])
            col["initial_success" if j == 0 else "swap_success"].append(s["success"])
            col["non_target"].append(s["non_target"])
            col["identity"].append(s["identity"])
            col["body_iou"].append(s.get("body_iou", float("nan")))  # absent in results from before it existed
        col["continuity_kp"] += r["continuity_kp"]
        col["continuity_kp_restore"] += r.get("continuity_kp_restore", [])
        col["continuity_px"] += r["continuity_px"]
        col["flicker"].append(r["flicker"])
        if "drift" in r:
            for k in ("drift", "fidelity_early", "fidelity_late"):
                col[k].append(r["drift"][k])
        col["swap_delay_frames"] += r["swap_delay_frames"]
        col["fps"].append(r["fps"])
        col["swap_latency_s"] += r["swap_latency_s"]
        col["case_seconds"].append(r["generate_s"] + r["score_s"])
    return {k: _stat(v) for k, v in col.items()}


def evaluate(engine, policy: str, cases: list[Case], evaluator: Evaluator | None = None,
             cfg: BenchConfig = BenchConfig(), progress=None) -> dict:
    """Run every case with `policy` (`engine=None` with policy "oracle" scores the GT renders)."""
    evaluator = evaluator or Evaluator()
    world = MannequinWorld()
    results = []
    for i, case in enumerate(cases):
        if policy == "oracle":
            size = (world.config.height, world.config.width) if engine is None else (engine.height, engine.width)
            r = run_oracle(case, evaluator, size, settle_frames(engine) * cfg.settle_chunks, cfg, world)
        else:
            r = run_case(engine, case, policy, evaluator, cfg, world)
        results.append(r)
        if progress:
            progress(i, r)
    return {
        "policy": policy,
        "checkpoint": getattr(engine, "checkpoint", None) if engine is not None else "ground-truth render",
        "cases": len(cases),
        "long_cases": sum(c.long for c in cases),
        "frames_total": int(sum(r["frames"] for r in results)),
        "config": asdict(cfg),
        "metric_config": asdict(evaluator.cfg),
        "evaluator": {"checkpoint": str(evaluator.path), "heldout_test": evaluator.accuracy()},
        "summary": aggregate(results),
        "per_case": results,
    }


def _jsonable(o):
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items() if k != "video"}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return None if math.isnan(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o


def load_engine(checkpoint: str | None, random_weights: bool, preset: str = "tiny"):
    from .stream import DEFAULT_CHECKPOINT, StreamingEngine

    if random_weights:
        return StreamingEngine.from_preset(preset, random_weights=True)
    return StreamingEngine.from_checkpoint(checkpoint or DEFAULT_CHECKPOINT)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fashionchameleon eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default=DEFAULT_POLICY,
                    help="a swap policy (refresh, withdraw, disentangle, anchored, recache; options as in anchored:restore_after=1) or oracle (score the GT renders)")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="case-set seed (cases are deterministic in it)")
    ap.add_argument("--json", dest="json_path", default=None, help="write the full result here")
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the bundled demo checkpoint)")
    ap.add_argument("--random-weights", action="store_true", help="random tiny engine (pipeline checks only)")
    ap.add_argument("--evaluator", default=None, help="evaluator checkpoint (default assets/checkpoints/evaluator_tiny)")
    ap.add_argument("--frames", type=int, default=None, help="override the short-case length")
    ap.add_argument("--no-long", action="store_true", help="skip the long (1,008-frame) cases")
    ap.add_argument("--smoke", action="store_true", help="2 short cases for CI; random weights if no checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = BenchConfig()
    if a.no_long:
        cfg = BenchConfig(long_every=0)
    n, frames = a.cases, a.frames
    note = None
    if a.smoke:
        n, frames = cfg.smoke_cases, frames or cfg.smoke_frames
    engine = None
    if a.policy != "oracle":
        try:
            engine = load_engine(a.checkpoint, a.random_weights)
        except FileNotFoundError as e:
            if not a.smoke:
                raise SystemExit(f"error: {e} (pass --checkpoint DIR, or --random-weights for a pipeline check)")
            note = f"{e}; smoke run falls back to a random-weights tiny engine"
            engine = load_engine(None, True)
    cases = build_cases(n, a.seed, cfg, frames=frames)

    def progress(i, r):
        if not a.quiet:
            s = r["segments"]
            print(f"[{a.policy}] case {i + 1}/{n} frames={r['frames']} swaps={r['actual_swaps']} "
                  f"fid={_nanmean([x['fidelity'] for x in s]):.3f} "
                  f"success={_nanmean([x['success'] for x in s[1:]]):.2f} "
                  f"cont={np.round(r['continuity_kp'], 2).tolist()} "
                  f"{r['generate_s'] + r['score_s']:.1f}s", file=sys.stderr, flush=True)

    res = evaluate(engine, a.policy, cases, Evaluator(a.evaluator), cfg, progress)
    res["smoke"] = bool(a.smoke)
    if note:
        res["note"] = note
    res = _jsonable(res)
    if a.json_path:
        Path(a.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_path).write_text(json.dumps(res, indent=1))
    if not a.quiet:
        s = res["summary"]
        for k in SUMMARY_KEYS:
            if s[k]["n"]:
                print(f"{k:22s} {s[k]['mean']:.4f} +- {s[k]['std']:.4f} (median {s[k]['median']:.4f}, n={s[k]['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
