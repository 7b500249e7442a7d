"""`fashionchameleon` command line: serve, render, bench, eval, data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .reschedule import DEFAULT_POLICY


def _load_image(path: str):
    from .data.folder import DataError, read_image

    try:
        return read_image(path)
    except DataError:
        what = "not a readable image" if Path(path).is_file() else "image not found"
        raise SystemExit(f"error: {what}: {path}") from None


# flag dest -> (StreamConfig field, type, help); shared by `render` and `serve` (app.server)
STREAM_FLAGS = {
    "garment_bias": ("garment_attention_bias", float,
                     "attention logit added to the garment image's tokens (default: the checkpoint's; "
                     "docs/RESCHEDULING.md)"),
    "garment_key_scale": ("garment_key_scale", float,
                          "multiplier on the garment image's attention keys (default: the checkpoint's; 1 = off; "
                          "docs/RESCHEDULING.md)"),
    "garment_key_scale_from_layer": ("garment_key_scale_from_layer", int,
                                     "apply the key scale from this transformer layer on (default: the "
                                     "checkpoint's; 0 = all)"),
    "frame_interpolation": ("frame_interpolation", str,
                            "in-betweens between latent frames: flow | none (default: the checkpoint's; "
                            "docs/DESIGN.md)"),
}


def add_stream_flags(p: argparse.ArgumentParser) -> None:
    for dest, (_, typ, help_) in STREAM_FLAGS.items():
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, default=None, help=help_)


def stream_overrides(values: dict) -> dict:
    """Parsed flag values -> `StreamConfig` overrides (None = keep the checkpoint's, see `Preset.with_stream`)."""
    return {field: values.get(dest) for dest, (field, _, _) in STREAM_FLAGS.items()}


def render_main(argv) -> dict:
    p = argparse.ArgumentParser(prog="fashionchameleon render",
                                description="Render a garment-swap clip offline: MP4 + JSON timeline.")
    p.add_argument("--reference", required=True)
    p.add_argument("--garment", action="append", required=True, help="repeat: G1 first, then the swaps")
    p.add_argument("--swap-at", default="", help="comma-separated frame indices, one per extra garment")
    p.add_argument("--frames", type=int, default=192)
    p.add_argument("--prompt", default="walks forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default=DEFAULT_POLICY)
    p.add_argument("--checkpoint", default=None)
    add_stream_flags(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output .mp4 (the timeline goes next to it as .json)")
    p.add_argument("--sheet", default=None, help="also write a contact sheet PNG (a row per garment segment)")
    a = p.parse_args(argv)
    swaps = [int(s) for s in a.swap_at.split(",") if s.strip()] if a.swap_at else []
    if len(swaps) != len(a.garment) - 1:
        p.error(f"--swap-at needs {len(a.garment) - 1} frame(s) for {len(a.garment)} garments, got {len(swaps)}")
    if swaps != sorted(swaps) or any(s <= 0 or s >= a.frames for s in swaps):
        p.error("--swap-at frames must be increasing and inside (0, --frames)")
    from .stream import StreamingEngine
    from .timeline import Swap, SwapScheduler, Timeline, save_timeline
    from .video import MP4Writer

    ref = _load_image(a.reference)
    garments = {g: _load_image(g) for g in a.garment}
    stream = stream_overrides(vars(a))
    engine = StreamingEngine.from_checkpoint(a.checkpoint, device=a.device, stream=stream)
    timeline = Timeline(fps=engine.fps, frames=a.frames, seed=a.seed, prompt=a.prompt, reference=a.reference,
                        policy=a.policy, checkpoint=engine.checkpoint,
                        swaps=[Swap(0, a.garment[0])] + [Swap(f, g) for f, g in zip(swaps, a.garment[1:])])
    scheduler = SwapScheduler(timeline.swaps[1:])
    session = engine.new_session(a.policy)
    out = Path(a.out)
    applied = []  # first frame actually generated in each garment
    kept = [] if a.sheet else None
    with MP4Writer(out, engine.fps) as writer:
        for fr in session.start(ref, garments[a.garment[0]], a.prompt, seed=a.seed, garment_id=a.garment[0],
                                max_frames=a.frames):
            writer.write(fr.image)
            if kept is not None:
                kept.append(fr.image)
            if not applied or applied[-1]["garment"] != fr.garment_id:
                applied.append({"frame": fr.index, "garment": fr.garment_id})
            due = scheduler.due(fr.index + 1)  # replay rule: request right before pulling the swap frame
            if due is not None:
                session.request_swap(garments[due.garment], due.garment)
    timeline.extra["applied"] = applied
    if session.restore_frames:  # `anchored`: where the original reference went back into its slot
        timeline.extra["reference_restored"] = list(session.restore_frames)
    timeline.extra["garment_attention_bias"] = engine.stream_config.garment_attention_bias
    timeline.extra["garment_key_scale"] = engine.stream_config.garment_key_scale
    timeline.extra["garment_key_scale_from_layer"] = engine.stream_config.garment_key_scale_from_layer
    timeline.extra["frame_interpolation"] = engine.stream_config.frame_interpolation
    save_timeline(timeline, out.with_suffix(".json"))
    if a.sheet:
        import numpy as np

        from .imageops import fit_crop, letterbox_white
        from .video import save_sheet, swap_sheet

        h, w = engine.height, engine.width
        rows = swap_sheet(fit_crop(ref, h, w), [letterbox_white(garments[x["garment"]], h, w) for x in applied],
                          np.stack(kept), [x["frame"] for x in applied])
        save_sheet(a.sheet, rows)
        print(f"wrote {a.sheet}")
    print(f"wrote {out} and {out.with_suffix('.json')} ({a.frames} frames at {engine.fps} fps)")
    return timeline.to_dict()


def serve_main(argv) -> None:
    p = argparse.ArgumentParser(prog="fashionchameleon serve", description="Live garment-swap UI + WebRTC.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--max-sessions", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a, rest = p.parse_known_args(argv)
    from app.server import serve

    serve(host=a.host, port=a.port, checkpoint=a.checkpoint, max_sessions=a.max_sessions, device=a.device,
          argv=rest)


def main(argv=None) -> int:
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except (FileNotFoundError, ValueError) as e:  # bad input: a clear message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
    cmds = ("serve", "render", "bench", "eval", "data")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in cmds:
        print("usage: fashionchameleon {serve,render,bench,eval,data} [options]\n"
              "  serve   live WebRTC + Gradio UI (default: bundled demo model on 127.0.0.1:7860)\n"
              "  render  offline clip with scheduled swaps -> MP4 + JSON timeline\n"
              "  bench   FPS / latency / memory harness\n"
              "  eval    held-out mannequin benchmark\n"
              "  data    synthetic data: `data synth --out DIR --clips N --seed S`")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    rc = 0
    if cmd == "serve":
        serve_main(rest)
    elif cmd == "render":
        render_main(rest)
    elif cmd == "bench":
        from .bench import main as bench_main

        bench_main(rest)
    elif cmd == "eval":
        from .evaluate import main as eval_main

        rc = eval_main(rest)
    elif cmd == "data":
        from .data.synth import main as data_main

        rc = data_main(rest)
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
