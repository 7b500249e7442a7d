"""Run-3 diagnostics of docs/TRAINING.md: where a tiny model's blur comes from.

    # how flat the latents a student commits to its cache get, chunk by chunk, vs real clips
    python benchmarks/diag_latents.py history --ckpt assets/checkpoints/fashionchameleon-tiny
    # one-step x0 of a teacher from noised held-out clips, PSNR vs the VAE's own reconstruction, per sigma
    python benchmarks/diag_latents.py x0 --ckpt assets/checkpoints/teacher_tiny
    # does the VAE use its non-colour latent channels? PSNR with them zeroed
    python benchmarks/diag_latents.py channels --ckpt assets/checkpoints/teacher_tiny
    # how much of a teacher's x0 error follows the input noise (varies between noise draws) and how much is
    # systematic (the same for every draw), per sigma; plus the "copy the reference" baseline per latent frame
    python benchmarks/diag_latents.py noise --ckpt assets/checkpoints/teacher_tiny --clips 6 --frames 21
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fashionchameleon.data import WorldDataset  # noqa: E402
from fashionchameleon.data.folder import read_image  # noqa: E402
from fashionchameleon.stream import StreamingEngine  # noqa: E402
from teacher.common import encode_batch, incontext_flow, load_stage  # noqa: E402
from teacher.sample import heldout_examples  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / (a.float() - b.float()).pow(2).mean()))


def spatial_std(z: torch.Tensor, colour: int) -> tuple[float, float]:
    """Per-channel spatial std averaged over frames: (colour channels, the rest)."""
    sd = z.float().std(dim=(-1, -2)).mean(dim=(0, 2))
    return round(float(sd[:colour].mean()), 3), round(float(sd[colour:].mean()), 3)


@torch.no_grad()
def history(a) -> dict:
    eng = StreamingEngine.from_checkpoint(a.ckpt)
    ref = read_image(str(REPO / "assets/references" / a.reference))
    gar = read_image(str(REPO / "assets/garments" / a.garment))
    s = eng.new_session()
    s.begin(ref, gar, a.prompt, seed=0)
    n = eng.stream_config.chunk_frames
    chunks = []
    for _ in range(a.chunks):
        s.step()
        chunks.append(spatial_std(torch.cat(s.history_latents(), dim=2)[:, :, -n:], a.colour_channels))
    ds = WorldDataset(split="test", size=(eng.height, eng.width), frames=a.frames, length=a.clips, seed=0)
    real = torch.cat([eng.vae.encode_video(torch.as_tensor(ds[i]["video"])[None].float()) for i in range(a.clips)])
    return {"real": spatial_std(real, a.colour_channels), "committed_per_chunk": chunks}


def _heldout(comp, a):
    exs = heldout_examples(comp, "test", a.clips, 21, 0)
    batch = {k: torch.stack([torch.as_tensor(e[k]) for e in exs]) for k in ("reference", "garment", "video")}
    return batch, [e["prompt"] for e in exs]


@torch.no_grad()
def x0(a) -> dict:
    comp = load_stage(a.ckpt)
    tr, vae = comp.transformer.eval(), comp.vae.eval()
    batch, prompts = _heldout(comp, a)
    ref, gar, vid = encode_batch(vae, batch, "cpu")
    recon = vae.decode(vid)
    text = comp.text_encoder(prompts).float()
    noise = torch.randn(vid.shape, generator=torch.Generator().manual_seed(0))
    out = {}
    for s in map(float, a.sigmas.split(",")):
        t = torch.full((vid.shape[0],), s * comp.preset.stream.num_train_timesteps)
        xt = (1 - s) * vid + s * noise
        pred = xt - s * incontext_flow(tr, ref, gar, xt, t, text)
        dec = vae.decode(pred)
        # frame 0 is pinned by the reference; the later frames are where motion has to be predicted
        out[f"sigma{s:g}"] = {"psnr_vs_recon": round(psnr(dec, recon), 2),
                             "psnr_vs_clip": round(psnr(dec, batch["video"]), 2),
                             "psnr_vs_recon_frame0": round(psnr(dec[:, :, :1], recon[:, :, :1]), 2),
                             "psnr_vs_recon_later": round(psnr(dec[:, :, 1:], recon[:, :, 1:]), 2),
                             "noisy_input_later": round(psnr(vae.decode(xt)[:, :, 1:], recon[:, :, 1:]), 2)}
    return out


def _spatial_grad(z: torch.Tensor) -> float:
    return float((z[..., 1:, :] - z[..., :-1, :]).pow(2).mean() + (z[..., :, 1:] - z[..., :, :-1]).pow(2).mean())


@torch.no_grad()
def noise(a) -> dict:
    """x0 error split over `draws` noise draws of the same clip: the spread between draws is what the input noise
    drives; the error of their mean is what the network gets wrong for any noise."""
    comp = load_stage(a.ckpt)
    tr, vae = comp.transformer.eval(), comp.vae.eval()
    batch, prompts = _heldout(comp, a)
    ref, gar, vid = encode_batch(vae, batch, "cpu")
    text = comp.text_encoder(prompts).float()
    per_frame = lambda e: [round(float(x), 3) for x in e.pow(2).mean(dim=(0, 1, 3, 4))]  # noqa: E731
    out = {"latent_std": round(float(vid.std()), 3), "copy_reference_mse_per_frame": per_frame(vid - ref),
           "real_spatial_grad": round(_spatial_grad(vid), 3)}
    for s in map(float, a.sigmas.split(",")):
        t = torch.full((vid.shape[0],), s * comp.preset.stream.num_train_timesteps)
        preds = []
        for d in range(a.draws):
            xt = (1 - s) * vid + s * torch.randn(vid.shape, generator=torch.Generator().manual_seed(d))
            preds.append(xt - s * incontext_flow(tr, ref, gar, xt, t, text))
        p = torch.stack(preds)
        out[f"sigma{s:g}"] = {"mse": round(float((p - vid).pow(2).mean()), 3),
                             "noise_driven": round(float(p.var(0, unbiased=True).mean()), 3),
                             "systematic": round(float((p.mean(0) - vid).pow(2).mean()), 3),
                             "mse_per_frame": per_frame(p[0] - vid),
                             "pred_spatial_grad": round(_spatial_grad(p[0]), 3)}
    return out


@torch.no_grad()
def channels(a) -> dict:
    comp = load_stage(a.ckpt)
    vae = comp.vae.eval()
    batch, _ = _heldout(comp, a)
    vid = vae.encode_video(batch["video"].float())
    z = vid.clone()
    z[:, a.colour_channels:] = 0
    return {"recon": round(psnr(vae.decode(vid), batch["video"]), 2),
            "non_colour_channels_zeroed": round(psnr(vae.decode(z), batch["video"]), 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["history", "x0", "channels", "noise"])
    ap.add_argument("--ckpt", required=True, help="stage folder")
    ap.add_argument("--reference", default="ref_00.png")
    ap.add_argument("--garment", default="longsleeve_hstripes_01.png")
    ap.add_argument("--prompt", default="strikes a pose")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--sigmas", default="0.95,0.83,0.625,0.5,0.25,0.1")
    ap.add_argument("--draws", type=int, default=4, help="noise draws per clip (noise)")
    ap.add_argument("--colour-channels", type=int, default=3, help="FastVAE shortcut channels (mean colour)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = {"history": history, "x0": x0, "channels": channels, "noise": noise}[a.what](a)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
