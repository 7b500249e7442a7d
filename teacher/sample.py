"""Many-step teacher sampling (UniPC + classifier-free guidance) of (reference, garment, prompt) into videos.

    # held-out triplets of the mannequin world (test split): MP4 per example + one contact sheet
    python -m teacher.sample --ckpt assets/checkpoints/teacher_tiny --split test --num 4 --out docs/figures/teacher
    # your own images
    python -m teacher.sample --ckpt DIR --reference ref.png --garment shirt.png --prompt "walks forward" --out out/

Each MP4 shows [reference | garment | generated] side by side (libx264, yuv420p). The contact sheet has one row per
example: reference, garment, then evenly spaced generated frames (and the ground-truth clip's frames when known).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from fashionchameleon.imageops import fit_crop, letterbox_white, to_tensor
from fashionchameleon.sampling import teacher_sample
from fashionchameleon.video import contact_row, label, save_sheet  # noqa: F401  (re-exported for the stages)
from fashionchameleon.vae import latent_frames
from teacher.common import (Components, DataConfig, blank_garment_latent, build_dataset, cfg_flow,
                            garment_guided_flow, load_stage)


@torch.no_grad()
def teacher_generate(comp: Components, reference: torch.Tensor, garment: torch.Tensor, prompts: list[str],
                     frames: int, steps: int = 50, guidance: float = 3.0, scheduler: str = "unipc", seed: int = 0,
                     negative_prompt: str = "", eta: float = 1.0, stop_sigma: float = 0.0,
                     shift: float | None = None, garment_guidance: float = 1.0) -> torch.Tensor:
    """reference / garment `[B,3,H,W]` in [-1,1] -> generated clip `[B,3,frames,H,W]` in [-1,1].

    `garment_guidance` > 1 also extrapolates away from the teacher's answer for a blank product image (the white
    letterbox canvas), as the DMD real score's `dmd.garment_guidance` does (docs/TRAINING.md, run 8)."""
    if not (math.isfinite(garment_guidance) and garment_guidance >= 0):
        raise ValueError(f"garment_guidance must be finite and >= 0, got {garment_guidance}")
    tr, vae, preset = comp.transformer.eval(), comp.vae.eval(), comp.preset
    dev = next(tr.parameters()).device
    dt = next(vae.parameters()).dtype
    ref = vae.encode_image(reference.to(dev, dt)).float()
    gar = vae.encode_image(garment.to(dev, dt)).float()
    b = ref.shape[0]
    text_c = comp.text_encoder(list(prompts)).to(dev).float()
    text_u = comp.text_encoder([negative_prompt] * b).to(dev).float()
    f = latent_frames(frames, preset.temporal_factor)
    g = torch.Generator().manual_seed(seed)
    shift = preset.stream.timestep_shift if shift is None else shift
    noise = torch.randn((b, tr.config.in_channels, f, *ref.shape[-2:]), generator=g).to(dev)

    text_scale = guidance if guidance > 1.0 else 1.0  # <= 1: the conditional branch alone
    gar_null = blank_garment_latent(vae, garment.to(dev, dt)) if garment_guidance != 1.0 else None

    def flow(x, t, conditional):  # every branch of a step in one batched forward
        tt = torch.as_tensor(t, dtype=torch.float32, device=dev).reshape(1).expand(b)
        if gar_null is not None:
            return garment_guided_flow(tr, ref, gar, gar_null, x, tt, text_c, text_u, text_scale, garment_guidance)
        return cfg_flow(tr, ref, gar, x, tt, text_c, text_u, text_scale)

    z = teacher_sample(flow, noise, steps=steps, guidance_scale=1.0, scheduler=scheduler, shift=shift, generator=g,
                       eta=eta, stop_sigma=stop_sigma)
    return vae.decode(z.to(dt)).float()


@torch.no_grad()
def vae_roundtrip(comp: Components, video: torch.Tensor) -> torch.Tensor:
    """The real clip `[3,T,H,W]` encoded and decoded by the stage's VAE: the best any sample in its latent space
    can score."""
    vae = comp.vae.eval()
    p = next(vae.parameters())
    return vae.decode(vae.encode_video(video[None].to(p.device, p.dtype)))[0].float().cpu()


# ------------------------------------------------------------------------------------------------ output helpers
def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3,T,H,W] or [3,H,W] in [-1,1] -> uint8 [T,H,W,3] / [H,W,3]."""
    x = x.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    return x.permute(1, 2, 3, 0).numpy() if x.ndim == 4 else x.permute(1, 2, 0).numpy()


def write_mp4(path: str | Path, frames: np.ndarray, fps: int, crf: int = 18) -> Path:
    """uint8 [T,H,W,3] RGB -> H.264 MP4 (yuv420p, even sizes)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    h2, w2 = h - h % 2, w - w % 2
    with av.open(str(path), mode="w") as box:
        st = box.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w2, h2, "yuv420p"
        st.options = {"crf": str(crf)}
        for img in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:h2, :w2]), format="rgb24")):
                box.mux(pkt)
        for pkt in st.encode():
            box.mux(pkt)
    return path


def heldout_examples(comp: Components, split: str, num: int, frames: int, seed: int) -> list[dict]:
    """World triplets of `split`, each with the product image of the reference's own (old) garment too."""
    data = DataConfig(frames=frames)
    ds = build_dataset(data, comp.preset, split, num, seed)
    out = []
    for i in range(num):
        ex = ds[i]
        w = ds.world
        s = w.triplet_seeds(ds.triplet_index(i), split)
        old = w.sample_upper_garment(s["ref_upper"], type=w.sample_upper_garment(s["upper"]).type)
        ex["reference_garment"] = w.product_image(old, (comp.preset.height, comp.preset.width))
        ex["pattern"] = w.sample_upper_garment(s["upper"]).pattern  # the garment image's, for `by_pattern`
        out.append(ex)
    return out


def transfer_scores(video: np.ndarray, garment: np.ndarray, old_garment: np.ndarray, evaluator,
                    skip: int = 1, stride: int = 2, real: np.ndarray | None = None,
                    real_masks: np.ndarray | None = None, masks: np.ndarray | None = None) -> dict:
    """Garment fidelity (docs/EVAL.md) of the generated frames vs the garment image and vs the reference's own
    garment; `transfer` = fraction of scored frames closer to the garment image (0.5 = no preference).

    With the `real` clip of the same triplet, `silhouette` is the mean IoU of the person masks of generated and real
    frames (a frame without a person scores 0): the motion is the prompt's, so a kept body overlaps the real one and
    a body that dissolves after frame 0 does not, even when the torso keeps the garment's colour. `real_masks`
    (the evaluator's masks of `real`) saves segmenting the same real clip again for each scored video; `masks`, the
    same for `video` itself."""
    from fashionchameleon import metrics as M

    if masks is None:
        masks = evaluator.masks(video)
    if real_masks is None and real is not None:
        real_masks = evaluator.masks(real)
    new, old = M.GarmentReference(garment, evaluator.cfg), M.GarmentReference(old_garment, evaluator.cfg)
    fn, fo, sil = [], [], []
    for t in range(skip, len(video), stride):
        a, b = M.garment_fidelity(video[t], masks[t], new, evaluator.cfg), \
            M.garment_fidelity(video[t], masks[t], old, evaluator.cfg)
        if not (np.isnan(a) or np.isnan(b)):
            fn.append(a), fo.append(b)
        if real_masks is not None:
            iou = M.silhouette_iou(masks[t], real_masks[t])
            sil.append(0.0 if np.isnan(iou) else iou)
    extra = {"silhouette": float(np.mean(sil))} if sil else {}
    if not fn:
        return {"fidelity": float("nan"), "fidelity_old": float("nan"), "transfer": float("nan"), "frames": 0} | extra
    fn, fo = np.array(fn), np.array(fo)
    return {"fidelity": float(fn.mean()), "fidelity_old": float(fo.mean()), "transfer": float((fn > fo).mean()),
            "frames": int(len(fn))} | extra


def summarise_scores(scores: list[dict]) -> dict:
    keys = ("fidelity", "fidelity_old", "transfer")
    ok = [s for s in scores if s["frames"]]
    out = {k: float(np.mean([s[k] for s in ok])) if ok else float("nan") for k in keys} | {"examples": len(ok)}
    if scores and all("silhouette" in s for s in scores):  # over every example: a lost body is part of the result
        out["silhouette"] = float(np.mean([s["silhouette"] for s in scores]))
    return out


def summarise_by(scores: list[dict], key: str) -> dict[str, dict]:
    """`summarise_scores` per value of `key` carried by each score (its example's `prompt` or garment `pattern`)."""
    groups: dict[str, list[dict]] = {}
    for sc in scores:
        groups.setdefault(str(sc.get(key, "")), []).append(sc)
    return {p: summarise_scores(g) for p, g in sorted(groups.items())}


def summarise_by_prompt(scores: list[dict]) -> dict[str, dict]:
    """Per prompt: motion is what every teacher so far loses the body on (docs/TRAINING.md), so a sheet's scores are
    worth reading per motion."""
    return summarise_by(scores, "prompt")


def render_examples(comp: Components, examples: list[dict], out: str | Path, frames: int, steps: int,
                    guidance: float, seed: int, cols: int = 6, name: str = "teacher", scheduler: str = "unipc",
                    mp4: bool = True, evaluator=None, eta: float = 1.0, stop_sigma: float = 0.0,
                    shift: float | None = None, garment_guidance: float = 1.0) -> dict:
    """Sample every example, write `<name>_<i>.mp4` and `<name>_sheet.png` under `out`.

    With an `evaluator` and examples that carry `reference_garment`, also score garment transfer of the generated
    clips, of the real clips and of their VAE round trips (the ceilings in pixels and in the latent space)."""
    out = Path(out)
    rows, files = [], []
    gen_scores, real_scores, vae_scores = [], [], []
    t0 = time.perf_counter()
    for i, ex in enumerate(examples):
        ref, gar = ex["reference"][None], ex["garment"][None]
        vid = teacher_generate(comp, ref, gar, [ex["prompt"]], frames, steps, guidance, scheduler, seed + i,
                               eta=eta, stop_sigma=stop_sigma, shift=shift, garment_guidance=garment_guidance)[0]
        r, g, v = to_uint8(ex["reference"]), to_uint8(ex["garment"]), to_uint8(vid)
        rows.append(contact_row(r, g, v, cols, "gen"))
        if "video" in ex:
            rows.append(contact_row(r, g, to_uint8(ex["video"]), cols, "real"))
        if evaluator is not None and "reference_garment" in ex:
            real = to_uint8(ex["video"]) if "video" in ex else None
            real_masks = evaluator.masks(real) if real is not None else None
            gen_scores.append(transfer_scores(v, g, ex["reference_garment"], evaluator, real_masks=real_masks)
                              | {"prompt": ex["prompt"]} | ({"pattern": ex["pattern"]} if "pattern" in ex else {}))
            if real is not None:
                real_scores.append(transfer_scores(real, g, ex["reference_garment"], evaluator, masks=real_masks))
                rt = to_uint8(vae_roundtrip(comp, ex["video"]))
                vae_scores.append(transfer_scores(rt, g, ex["reference_garment"], evaluator, real_masks=real_masks)
                                  | {"prompt": ex["prompt"]})
        if mp4:
            side = np.concatenate([np.broadcast_to(r, v.shape), np.broadcast_to(g, v.shape), v], axis=2)
            files.append(str(write_mp4(out / f"{name}_{i}.mp4", side, comp.preset.stream.fps)))
    sheet = save_sheet(out / f"{name}_sheet.png", rows)
    res = {"sheet": str(sheet), "videos": files, "seconds": round(time.perf_counter() - t0, 1)}
    if gen_scores:
        res["scores"] = {"generated": summarise_scores(gen_scores), "real": summarise_scores(real_scores),
                         "per_example": gen_scores, "by_prompt": summarise_by_prompt(gen_scores)}
        if any("pattern" in sc for sc in gen_scores):  # the DMD students lose dots and checks first (session 22)
            res["scores"]["by_pattern"] = summarise_by(gen_scores, "pattern")
        if vae_scores:
            res["scores"].update(vae_roundtrip=summarise_scores(vae_scores),
                                 vae_roundtrip_by_prompt=summarise_by_prompt(vae_scores))
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="stage folder (preset.json, transformer/, vae/, text_encoder/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="test", help="world split for held-out examples")
    ap.add_argument("--num", type=int, default=4)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--reference")
    ap.add_argument("--garment")
    ap.add_argument("--prompt", default="walks forward")
    ap.add_argument("--frames", type=int, help="pixel frames (default: two streaming chunks)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--scheduler", default="unipc", choices=["unipc", "euler", "renoise"],
                    help="diffusers ODE solvers, or the stochastic x0 re-noising sampler (fashionchameleon.sampling)")
    ap.add_argument("--eta", type=float, default=1.0,
                    help="renoise only: share of fresh noise per step (1 = Self-Forcing sampler, 0 = Euler)")
    ap.add_argument("--stop-sigma", type=float, default=0.0,
                    help="renoise only: return the x0 predicted at the last step with sigma >= this")
    ap.add_argument("--shift", type=float, help="sampling timestep shift (default: the stage's training shift)")
    ap.add_argument("--garment-guidance", type=float, default=1.0,
                    help="> 1: also guide away from a blank product image (1 = text CFG only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--score", action="store_true",
                    help="score garment transfer of held-out examples with the evaluator (docs/EVAL.md)")
    ap.add_argument("--no-mp4", action="store_true")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    comp = load_stage(args.ckpt)
    comp.transformer.eval()
    p = comp.preset
    frames = args.frames or p.pixel_frames(2 * p.stream.chunk_frames)
    if args.reference or args.garment:
        if not (args.reference and args.garment):
            ap.error("--reference and --garment go together")
        from fashionchameleon.data.folder import read_image

        ref, gar = read_image(args.reference), read_image(args.garment)
        examples = [{"reference": to_tensor(fit_crop(ref, p.height, p.width))[0],
                     "garment": to_tensor(letterbox_white(gar, p.height, p.width))[0], "prompt": args.prompt}]
    else:
        examples = heldout_examples(comp, args.split, args.num, frames, args.data_seed)
    evaluator = None
    if args.score:
        from fashionchameleon.evaluate import Evaluator

        evaluator = Evaluator()
    res = render_examples(comp, examples, args.out, frames, args.steps, args.guidance, args.seed,
                          scheduler=args.scheduler, mp4=not args.no_mp4, evaluator=evaluator, eta=args.eta,
                          stop_sigma=args.stop_sigma, shift=args.shift, garment_guidance=args.garment_guidance)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    brief = {k: v for k, v in res.items() if k != "scores"}
    if "scores" in res:
        brief["scores"] = {k: res["scores"][k] for k in ("generated", "real", "vae_roundtrip") if k in res["scores"]}
    print(json.dumps(brief))
    return res


if __name__ == "__main__":
    main()
