"""Performance harness behind `fashionchameleon bench`.

Definitions (also in docs/BENCHMARKS.md):
- fps: steady-state frames delivered per second = frames of the chunks after the warm-up / their wall time,
  VAE decode, condition encodes and swap rescheduling included.
- ttff_s: time from `begin()` (condition encode + prefill) to the first decoded frame.
- swap_latency_s: time from `request_swap()` to the first frame generated in the new garment. The bench asks at
  a chunk boundary (best case); a request that lands mid-chunk waits for that chunk too, so the worst case is
  `swap_latency_s + chunk_ms` (reported as `swap_latency_worst_s`).
- stage_ms: mean per chunk of each denoising pass, the cache-write pass, the VAE decode, the in-betweens
  (`frame_interpolation`), condition encodes and the swap rescheduling (the last two averaged over the chunks where
  they ran).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .reschedule import DEFAULT_POLICY
from .timeline import portable_path

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def host_rss_bytes() -> int:
    """Current resident set size (Linux /proc), falling back to the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_host_rss_bytes()


def peak_host_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def demo_inputs(engine, seed: int = 0):
    """Bundled assets when present, else deterministic synthetic images (random weights don't care)."""
    from .stream import ASSETS_DIR

    refs = sorted((ASSETS_DIR / "references").glob("*.png"))
    gars = sorted((ASSETS_DIR / "garments").glob("*.png"))
    if refs and len(gars) >= 2:
        import cv2

        load = lambda p: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)  # noqa: E731
        return load(refs[0]), [load(g) for g in gars[:3]]
    rng = np.random.default_rng(seed)
    h, w = engine.height, engine.width
    ref = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    garments = [np.full((h, w, 3), c, np.uint8) for c in ((200, 40, 40), (40, 60, 200), (40, 170, 60))]
    return ref, garments


def build_engine(args):
    from .configs import get_preset
    from .stream import StreamingEngine

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    stream = {"frame_interpolation": args.frame_interpolation}
    if args.random_weights:
        preset = get_preset(args.preset).with_stream(**stream)
        engine = StreamingEngine.from_preset(preset, device=device, dtype=dtype, seed=args.seed)
    else:
        engine = StreamingEngine.from_checkpoint(args.checkpoint, device=device, dtype=dtype, stream=stream)
    if args.vae == "fast" and engine.preset.vae.get("backend") != "fast":
        from .vae import FastVAE

        engine.vae = FastVAE(z_dim=engine.vae.z_dim, spatial_factor=engine.vae.spatial_factor).to(device).eval()
    elif args.vae == "hybrid":
        from .vae import FastVAE, HybridVAE, decoder_fields

        dec = FastVAE(**decoder_fields(engine.vae)).to(device=device, dtype=engine.vae.dtype).eval()
        engine.vae = HybridVAE(engine.vae, dec)  # a hybrid's own encoder is kept
    if args.attn != "sdpa":
        engine.transformer.set_attn_backend(args.attn)
    if args.compile:
        engine.transformer.forward = torch.compile(engine.transformer.forward, dynamic=True)
    return engine


def run_stream(engine, frames: int, swap_every: int, policy: str, warmup_chunks: int, seed: int,
               prompt: str = "walks forward", rss_every: int = 0) -> dict:
    ref, garments = demo_inputs(engine, seed)
    s = engine.new_session(policy)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    t0 = time.perf_counter()
    s.begin(ref, garments[0], prompt, seed=seed, garment_id="g0")
    begin_s = time.perf_counter() - t0
    chunk_rec = []  # (n_frames, wall_s, stages, swapped)
    delivered = 0
    next_swap = swap_every if swap_every > 0 else math.inf
    n_swaps = 0
    rss = []
    while delivered < frames:
        if delivered >= next_swap:
            n_swaps += 1
            s.request_swap(garments[n_swaps % len(garments)], f"g{n_swaps % len(garments)}")
            next_swap += swap_every
        c0 = time.perf_counter()
        out = s.step()
        wall = time.perf_counter() - c0
        chunk_rec.append((len(out), wall, dict(s.timer.ms), out[0].swap_generation))
        delivered += len(out)
        if rss_every and (delivered // rss_every) != ((delivered - len(out)) // rss_every):
            rss.append((delivered, host_rss_bytes()))
    steady = chunk_rec[warmup_chunks:] or chunk_rec
    st_frames = sum(c[0] for c in steady)
    st_time = sum(c[1] for c in steady)
    stage_names = sorted({k for c in steady for k in c[2]})
    stage_ms = {}
    for k in stage_names:
        vals = [c[2][k] for c in steady if k in c[2]]
        stage_ms[k] = statistics.fmean(vals)
    chunk_ms = [c[1] * 1e3 for c in steady]
    lat = s.swap_latencies
    chunk_frames = engine.stream_config.chunk_frames * engine.preset.temporal_factor
    chunk_period_s = chunk_frames / engine.fps
    res = {
        "fps": st_frames / st_time if st_time > 0 else 0.0,
        "ttff_s": s.ttff_s,
        "begin_s": begin_s,
        "swap_latency_s": statistics.fmean(lat) if lat else None,
        "swap_latency_max_s": max(lat) if lat else None,
        "swap_latency_worst_s": (statistics.fmean(lat) + statistics.fmean(chunk_ms) / 1e3) if lat else None,
        "swaps": len(lat),
        "chunk_period_s": chunk_period_s,
        "swap_latency_chunks": (statistics.fmean(lat) / chunk_period_s) if lat else None,
        "chunk_ms": statistics.fmean(chunk_ms),
        "chunk_ms_p50": statistics.median(chunk_ms),
        "chunk_ms_p90": float(np.percentile(chunk_ms, 90)),
        "stage_ms": stage_ms,
        "frames": delivered,
        "steady_frames": st_frames,
        "warmup_chunks": warmup_chunks,
        "kv_cache_bytes": s.cache.nbytes,
        "fps_per_chunk": [c[0] / c[1] for c in chunk_rec],
        "rss_trace": rss,
    }
    s.close()
    return res


def run_teacher_baseline(engine, frames: int, steps: int, guidance: float, seed: int) -> dict:
    """Bidirectional teacher, many steps with CFG, on windows of the training length until `frames` exist."""
    from .sampling import teacher_sample

    ref, garments = demo_inputs(engine, seed)
    e = engine
    cfg = e.stream_config
    window = cfg.cache_frames - cfg.cond_frames  # latent frames per window (21 in the paper)
    per_window = e.preset.pixel_frames(window)
    n_windows = max(1, math.ceil(frames / per_window))
    m = e.transformer
    g = torch.Generator().manual_seed(seed)
    h, w = e.height // e.preset.spatial_factor, e.width // e.preset.spatial_factor
    t0 = time.perf_counter()
    produced = 0
    with torch.no_grad():
        cond = torch.cat([e.encode_reference(ref), e.encode_garment(garments[0])], dim=2)
        text = e.encode_text("walks forward")
        null = e.encode_text("")
        for _ in range(n_windows):
            noise = torch.randn(1, m.config.in_channels, window, h, w, generator=g).to(e.device, e.dtype)

            def flow(x, t, conditional):
                tt = torch.cat([torch.zeros(1, cfg.cond_frames), torch.full((1, window), float(t))], 1)
                out = m(torch.cat([cond, x], 2), tt.to(e.device), text if conditional else null).sample
                return out[:, :, cfg.cond_frames:]

            lat = teacher_sample(flow, noise, steps=steps, guidance_scale=guidance, shift=cfg.timestep_shift)
            pix = e.vae.decode(lat.to(next(e.vae.parameters()).dtype))
            if e.device.type == "cuda":
                torch.cuda.synchronize()
            produced += pix.shape[2]
    wall = time.perf_counter() - t0
    return {"baseline": "teacher", "baseline_steps": steps, "baseline_cfg": guidance,
            "baseline_frames": produced, "baseline_s": wall, "baseline_fps": produced / wall,
            "baseline_window_latents": window}


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 4096, iters: int = 20) -> float:
    if device.type != "cuda":
        n, iters = 512, 10
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fashionchameleon bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="tiny | wan2.1-1.3b | wan2.2-5b | test")
    p.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the bundled demo model)")
    p.add_argument("--random-weights", action="store_true", help="random weights of --preset (speed only)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--swap-every", type=int, default=96, help="frames between swaps (0 = none)")
    p.add_argument("--policy", default=DEFAULT_POLICY)
    p.add_argument("--frame-interpolation", default=None, choices=["flow", "none"],
                   help="in-betweens between latent frames (default: the checkpoint's / preset's)")
    p.add_argument("--warmup-chunks", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "flex", "xformers"])
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer forward")
    p.add_argument("--vae", default="preset", choices=["preset", "fast", "hybrid"],
                   help="'fast' swaps in a random FastVAE for encode and decode, to price the decode; 'hybrid' keeps "
                        "the preset's encoder and decodes with a random FastVAE decoder, as a distilled decoder "
                        "(HybridVAE, teacher/train_vae.py finetune.encoder) streams")
    p.add_argument("--baseline", default=None, choices=["teacher"], help="also time the bidirectional teacher")
    p.add_argument("--baseline-steps", type=int, default=50)
    p.add_argument("--baseline-cfg", type=float, default=3.0)
    p.add_argument("--baseline-frames", type=int, default=None, help="default: --frames")
    p.add_argument("--floor", action="store_true", help="measure matmul TFLOP/s and report the FLOP floor")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if args.frames < 1:
        p.error("--frames must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args)
    preset = engine.preset
    run_stream(engine, frames=1, swap_every=0, policy=args.policy, warmup_chunks=0, seed=args.seed)  # load/JIT
    res = run_stream(engine, args.frames, args.swap_every, args.policy, args.warmup_chunks, args.seed)
    res.update({
        "preset": preset.name,
        "checkpoint": portable_path(engine.checkpoint),
        "random_weights": bool(args.random_weights),
        "resolution": [preset.height, preset.width],
        "device": str(engine.device),
        "device_name": device_name(engine.device),
        "dtype": args.dtype,
        "policy": args.policy,
        "frame_interpolation": engine.stream_config.frame_interpolation,
        "swap_every": args.swap_every,
        "attn": args.attn,
        "compile": args.compile,
        "vae": args.vae,
        "torch": torch.__version__,
        "target_fps": engine.fps,
        "peak_host_rss_bytes": peak_host_rss_bytes(),
        "peak_mem_bytes": (torch.cuda.max_memory_allocated(engine.device) if engine.device.type == "cuda"
                           else peak_host_rss_bytes()),
        "flops_per_chunk": preset.flops_per_chunk() * (len(preset.stream.denoising_steps) + 1),
        "command": "fashionchameleon bench " + " ".join(sys.argv[2:] if argv is None else argv),
    })
    if args.floor:
        tflops = measure_matmul_tflops(engine.device, DTYPES[args.dtype])
        res["matmul_tflops"] = tflops
        res["chunk_floor_ms"] = res["flops_per_chunk"] / (tflops * 1e12) * 1e3
    if args.baseline == "teacher":
        b = run_teacher_baseline(engine, args.baseline_frames or args.frames, args.baseline_steps,
                                 args.baseline_cfg, args.seed)
        res.update(b)
        res["speedup"] = res["fps"] / b["baseline_fps"]
    printable = {k: v for k, v in res.items() if k not in ("fps_per_chunk", "rss_trace")}
    print(json.dumps(printable, indent=2, default=str))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
