"""CPU VAE throughput: FastVAE (demo backend) vs a tiny random Wan VAE; or a preset's VAE vs its HybridVAE.

    python benchmarks/bench_vae.py [--vae DIR] [--height 160 --width 128] [--chunk-latents 3] [--threads 2]
    # the preset's VAE (random weights, its real architecture) against the same encoder with a FastVAE decoder
    python benchmarks/bench_vae.py --preset wan2.1-1.3b --height 240 --width 416 --repeats 3

Decode: one streaming chunk of `chunk_latents` latent frames (= chunk_latents * temporal_factor pixel frames) through
`stream_decoder()` after its first latent; encode: a clip of 1 + chunk_latents * tf frames. fp32, torch.no_grad,
median over repeats. Prints frames/s and one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers import AutoencoderKLWan

from fashionchameleon.configs import get_preset
from fashionchameleon.vae import FastVAE, HybridVAE, WanVAE, build_vae, decoder_fields, load_vae

# tiny random Wan2.1-layout VAE (the smallest in research/platform.md §3)
TINY_WAN = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])


def _median_s(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def bench(name: str, vae, height: int, width: int, chunk_latents: int, repeats: int) -> dict:
    vae.eval()
    tf, s = vae.temporal_factor, vae.spatial_factor
    clip = torch.rand(1, 3, 1 + chunk_latents * tf, height, width) * 2 - 1
    z = torch.randn(1, vae.z_dim, 1 + chunk_latents, height // s, width // s)
    dec = vae.stream_decoder()

    times = []
    for i in range(repeats + 1):  # the first round is warm-up
        dec.reset()
        dec.decode(z[:, :, :1])  # stream start (not timed)
        t = time.perf_counter()
        dec.decode(z[:, :, 1:])
        times.append(time.perf_counter() - t)
    dec_s = statistics.median(times[1:])
    enc_s = _median_s(lambda: vae.encode_video(clip), repeats)
    n_dec, n_enc = chunk_latents * tf, clip.shape[2]
    res = {"model": name, "params": sum(p.numel() for p in vae.parameters()), "resolution": [height, width],
           "decode_frames": n_dec, "decode_ms": round(dec_s * 1e3, 2), "decode_fps": round(n_dec / dec_s, 1),
           "encode_frames": n_enc, "encode_ms": round(enc_s * 1e3, 2), "encode_fps": round(n_enc / enc_s, 1),
           "threads": torch.get_num_threads()}
    print(f"{name:>12}: decode {res['decode_fps']:8.1f} frames/s ({n_dec} frames in {res['decode_ms']} ms), "
          f"encode {res['encode_fps']:8.1f} frames/s ({n_enc} frames in {res['encode_ms']} ms)")
    return res


def main() -> None:
    preset = get_preset("tiny")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", help="trained VAE folder (default: random FastVAE from the tiny preset)")
    ap.add_argument("--height", type=int, default=preset.height)
    ap.add_argument("--width", type=int, default=preset.width)
    ap.add_argument("--chunk-latents", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-wan", action="store_true")
    ap.add_argument("--preset", help="bench this preset's VAE and its HybridVAE (FastVAE decoder) instead")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.preset:
        vae = build_vae(get_preset(args.preset).vae)
        dec = FastVAE(**decoder_fields(vae))
        results = [bench(f"{args.preset} VAE", vae, args.height, args.width, args.chunk_latents, args.repeats),
                   bench("HybridVAE", HybridVAE(vae, dec), args.height, args.width, args.chunk_latents, args.repeats)]
        for r in results:
            print(json.dumps(r))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        return
    fast = load_vae(args.vae) if args.vae else build_vae(preset.vae)
    results = [bench("FastVAE", fast, args.height, args.width, args.chunk_latents, args.repeats)]
    if not args.skip_wan:
        wan = WanVAE(AutoencoderKLWan(**TINY_WAN))
        results.append(bench("tiny WanVAE", wan, args.height, args.width, args.chunk_latents, max(1, args.repeats // 3)))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
