"""Stage 3: write the shipped demo checkpoint and measure it through the real streaming loop.

    python -m distill.export --ckpt runs/dmd_tiny/final --out assets/checkpoints/fashionchameleon-tiny \
        [--sheet docs/figures/distill_stream.png] [--examples 2] [--chunks 6] [--swap-at 3] [--stream KEY=VALUE]

`--ckpt` is any stage folder (teacher-forcing or DMD student). The folder is written with
`StreamingEngine(...).save(dir, card)`, then reloaded with `StreamingEngine.from_checkpoint` and evaluated on
held-out (test-split) triplets: every example streams `--chunks` chunks with a garment swap (`disentangle` policy)
requested before chunk `--swap-at`. The model card records the stage history (`--history` JSON files), the streaming
FPS on this machine and the per-chunk rewards (garment colour fidelity against the garment being worn, sharpness).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from distill.make_stage import parse_stream
from distill.reward import RewardConfig, colour_fidelity, sharpness
from fashionchameleon.stream import StreamingEngine
from teacher.common import DataConfig, build_dataset, load_stage
from teacher.sample import contact_row, label, save_sheet, to_uint8, write_mp4


def _px(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0


@torch.no_grad()
def stream_eval(engine: StreamingEngine, examples: list[dict], chunks: int, swap_at: int, seed: int = 0,
                reward: RewardConfig | None = None, policy: str = "disentangle") -> dict:
    """Stream each example (swap to the next example's garment before chunk `swap_at`); returns metrics + frames."""
    reward = reward or RewardConfig()
    rows, videos, colour_pre, colour_post, sharp, fps = [], [], [], [], [], []
    for i, ex in enumerate(examples):
        ref, gar = to_uint8(ex["reference"]), to_uint8(ex["garment"])
        gar2 = to_uint8(examples[(i + 1) % len(examples)]["garment"])
        s = engine.new_session(policy=policy)
        s.begin(ref, gar, ex["prompt"], seed=seed + i, garment_id="g1")
        frames, worn = [], []
        for c in range(chunks):
            if c == swap_at:
                s.request_swap(gar2, garment_id="g2")
            out = s.step()
            frames += [f.image for f in out]
            worn += [f.garment_id for f in out]
        fps.append(s.stats()["fps"])
        s.close()
        vid = np.stack(frames)
        px = torch.stack([_px(f) for f in vid], dim=1)[None]  # [1,3,T,H,W]
        g1, g2 = _px(gar)[None], _px(gar2)[None]
        c1 = colour_fidelity(px, g1, reward)[0]
        c2 = colour_fidelity(px, g2, reward)[0]
        post = np.array([w == "g2" for w in worn])
        colour_pre.append(float(c1[~post].mean()))
        if post.any():
            colour_post.append(float(c2[post].mean()))
        sharp.append(float(sharpness(px, reward).mean()))
        row = contact_row(ref, gar, vid, cols=8, tag="stream")
        swap_tile = label(gar2, f"swap@{int(np.argmax(post)) if post.any() else -1}")
        rows.append(np.concatenate([row, np.full((ref.shape[0], 2, 3), 255, np.uint8), swap_tile], axis=1))
        videos.append(vid)
    return {
        "fps": float(np.mean(fps)), "colour_fidelity_before_swap": float(np.mean(colour_pre)),
        "colour_fidelity_after_swap": float(np.mean(colour_post)) if colour_post else None,
        "sharpness": float(np.mean(sharp)), "examples": len(examples), "chunks": chunks, "swap_at": swap_at,
        "frames_per_example": len(videos[0]) if videos else 0,
        "_rows": rows, "_videos": videos,
    }


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def card_text(ckpt: str, metrics: dict, history: list[dict], size_mb: float, preset) -> str:
    lines = [f"# fashionchameleon-tiny (demo checkpoint, preset `{preset.name}`)", "",
             f"Real-time garment-swap streaming model for {preset.height}x{preset.width} at {preset.stream.fps} fps: "
             f"a causal {preset.transformer['num_layers']}-layer DiT "
             f"({preset.transformer['num_attention_heads']}x{preset.transformer['attention_head_dim']}), the demo "
             "FastVAE and a learned text encoder, trained on the procedural mannequin world on a 2-core CPU.",
             "", f"Exported from `{ckpt}` with `python -m distill.export`. Folder size {size_mb:.1f} MB.", "",
             "## Training history (2-core CPU; threads per run in docs/TRAINING.md)", "",
             "| stage | steps | samples | CPU time | final loss(es) |", "|---|---|---|---|---|"]
    for h in history:
        losses = ", ".join(f"{k}={v:.4g}" for k, v in h.items() if k.endswith("loss") and isinstance(v, float))
        lines.append(f"| {h.get('stage', '?')} | {h.get('step', '?')} | {h.get('samples_seen', '?')} | "
                     f"{h.get('elapsed_s', 0) / 60:.1f} min | {losses} |")
    m = {k: v for k, v in metrics.items() if not k.startswith("_")}
    lines += ["", "## Measured here (held-out test-split people and garments, `StreamingEngine.from_checkpoint`)", "",
              f"- streaming throughput: **{m['fps']:.1f} frames/s** on this CPU (preset fps {preset.stream.fps})",
              f"- garment colour fidelity before the swap: {m['colour_fidelity_before_swap']:.3f} (0..1, "
              "see distill/reward.py)",
              f"- garment colour fidelity after the swap (vs. the new garment): "
              f"{m['colour_fidelity_after_swap'] if m['colour_fidelity_after_swap'] is None else round(m['colour_fidelity_after_swap'], 3)}",
              f"- sharpness score: {m['sharpness']:.3f} (0..1)",
              f"- protocol: {m['examples']} examples x {m['chunks']} chunks, swap requested before chunk "
              f"{m['swap_at']} (disentangle policy)", "",
              "This is a demo-scale model: expect blurry figures; it shows the pipeline, not paper quality.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", default="assets/checkpoints/fashionchameleon-tiny")
    ap.add_argument("--sheet", help="contact sheet PNG of the held-out streams")
    ap.add_argument("--mp4", help="MP4 of the first held-out stream")
    ap.add_argument("--examples", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--swap-at", type=int, default=3)
    ap.add_argument("--history", nargs="*", default=[], help="stage:result.json pairs for the model card")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-mb", type=float, default=50.0)
    ap.add_argument("--stream", action="append", default=[], metavar="KEY=VALUE",
                    help="replace a StreamConfig field of the stage's preset (e.g. context_noise=300)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    comp = load_stage(args.ckpt)
    if args.stream:
        try:
            comp.preset = comp.preset.with_stream(**parse_stream(args.stream))
        except (ValueError, TypeError) as e:
            ap.error(str(e))
    engine = StreamingEngine(comp.preset, comp.transformer, comp.vae, comp.text_encoder)
    out = Path(args.out)
    engine.save(out)  # weights first, card after measuring the reloaded folder
    size = folder_mb(out)
    if size > args.max_mb:
        raise SystemExit(f"{out} is {size:.1f} MB > {args.max_mb} MB")
    engine = StreamingEngine.from_checkpoint(out)
    frames = comp.preset.pixel_frames(comp.preset.stream.chunk_frames)
    ds = build_dataset(DataConfig(frames=frames), comp.preset, "test", args.examples, 0)
    examples = [ds[i] for i in range(args.examples)]
    t0 = time.perf_counter()
    metrics = stream_eval(engine, examples, args.chunks, args.swap_at)
    history = []
    for item in args.history:
        stage, path = item.split(":", 1)
        if os.path.isfile(path):
            history.append({"stage": stage, **json.loads(Path(path).read_text())})
    (out / "README.md").write_text(card_text(args.ckpt, metrics, history, size, comp.preset))
    (out / "eval.json").write_text(json.dumps({k: v for k, v in metrics.items() if not k.startswith("_")}, indent=2))
    if args.sheet:
        save_sheet(args.sheet, metrics["_rows"])
    if args.mp4:
        write_mp4(args.mp4, metrics["_videos"][0], comp.preset.stream.fps)
    res = {k: v for k, v in metrics.items() if not k.startswith("_")}
    res.update(size_mb=round(folder_mb(out), 2), eval_s=round(time.perf_counter() - t0, 1))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
