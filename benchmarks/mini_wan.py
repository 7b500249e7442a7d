"""A miniature Wan2.2-TI2V-5B diffusers directory with random weights, for running the real-weight path
(`model.pretrained`, umT5 text, the Wan VAE, the `*wan2.2-5b.yaml` configs) without the 20 GB download.

Same layout and the same component classes as the real directory: `transformer/` (diffusers
`WanTransformer3DModel`), `vae/` (`AutoencoderKLWan` in the 2.2 layout: patch 2, residual blocks, 16x spatial,
48 latent channels), `text_encoder/` (transformers `UMT5EncoderModel`), `tokenizer/` (a fast tokenizer) and
`model_index.json`. Only the widths and depths are shrunk, so every code path that reads shapes from the configs
runs as it would at 5B. Needs the `text` extra (transformers).

    python benchmarks/mini_wan.py --out runs/mini_wan
    # then e.g. model.pretrained: runs/mini_wan with model.height/width set to a small size (multiples of 32)
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# the 2.2 VAE's channel layout; its widths are what we shrink
WAN22_LATENT_CHANNELS = 48
WAN22_VAE_PATCH = 2


@dataclass
class MiniWanConfig:
    heads: int = 2
    head_dim: int = 12
    ffn_dim: int = 32
    layers: int = 2
    freq_dim: int = 32
    text_dim: int = 16  # umT5 d_model (4096 in umT5-XXL)
    text_layers: int = 1
    text_heads: int = 2
    text_ff: int = 32
    vae_base_dim: int = 8
    vae_decoder_base_dim: int = 12
    seed: int = 0


SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # umT5's ids 0, 1, 2


def _vocabulary() -> list[str]:
    from fashionchameleon.data.world import MOTION_PROMPTS

    words = sorted({w for p in MOTION_PROMPTS.values() for w in p.lower().split()})
    return [*SPECIAL_TOKENS, *words]


def build_tokenizer(out: Path):
    """A word-level fast tokenizer over the mannequin world's prompt words (unknown words -> <unk>), ending each
    prompt with </s> as umT5's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out))
    return fast


def build_mini_wan(out: str | Path, cfg: MiniWanConfig | None = None) -> Path:
    """Write the directory and return its path."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = cfg or MiniWanConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(out / "tokenizer")
    text = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=cfg.text_dim, d_kv=cfg.text_dim // cfg.text_heads, d_ff=cfg.text_ff,
        num_layers=cfg.text_layers, num_heads=cfg.text_heads, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
        tie_word_embeddings=False))
    text.save_pretrained(str(out / "text_encoder"), safe_serialization=True)
    z = WAN22_LATENT_CHANNELS
    WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=z,
        out_channels=z, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    ).save_pretrained(str(out / "transformer"), safe_serialization=True)
    g = torch.Generator().manual_seed(cfg.seed)
    AutoencoderKLWan(
        base_dim=cfg.vae_base_dim, decoder_base_dim=cfg.vae_decoder_base_dim, z_dim=z, dim_mult=[1, 2, 4, 4],
        num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True,
        in_channels=3 * WAN22_VAE_PATCH**2, out_channels=3 * WAN22_VAE_PATCH**2, patch_size=WAN22_VAE_PATCH,
        scale_factor_spatial=8 * WAN22_VAE_PATCH, scale_factor_temporal=4,
        latents_mean=(0.1 * torch.randn(z, generator=g)).tolist(),
        latents_std=(1.0 + 0.1 * torch.rand(z, generator=g)).tolist(),
    ).save_pretrained(str(out / "vae"), safe_serialization=True)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "_note": "fashionchameleon miniature (random weights)",
        "mini_wan_config": asdict(cfg),
        "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    }, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_mini_wan(args.out, MiniWanConfig(seed=args.seed)))


if __name__ == "__main__":
    main()
