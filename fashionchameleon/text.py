"""Text encoders: a small learned one for the demo and Wan's umT5 from a local directory for real runs."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

_WORD = re.compile(r"[a-z0-9]+")


class LearnedTextEncoder(ModelMixin, ConfigMixin):
    """Hashed word embeddings + a learned position table + one small MLP.

    Enough for the mannequin world's short motion prompts; stable hashing (crc32) keeps token ids the
    same across processes and machines.
    """

    @register_to_config
    def __init__(self, vocab_size: int = 512, max_length: int = 8, dim: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab_size + 1, dim)  # id 0 = padding
        self.pos = nn.Parameter(torch.zeros(max_length, dim))
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        n, vocab = self.config.max_length, self.config.vocab_size
        ids = torch.zeros(len(prompts), n, dtype=torch.long)
        for i, p in enumerate(prompts):
            words = _WORD.findall(p.lower())[:n]
            for j, w in enumerate(words):
                ids[i, j] = 1 + zlib.crc32(w.encode()) % vocab
        return ids

    def forward(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self.tokenize(prompts).to(self.pos.device)
        h = self.tok(ids) + self.pos
        h = h + self.mlp(h)
        return h * (ids > 0).unsqueeze(-1).to(h.dtype)  # empty prompt -> zeros (the CFG null condition)


TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


class UMT5TextEncoder(nn.Module):
    """Wan's umT5-XXL encoder from a local diffusers/transformers directory (needs the `text` extra)."""

    def __init__(self, tokenizer, encoder, max_length: int = 512):
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int = 512, dtype=torch.float32):
        try:
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("umT5 needs `pip install fashionchameleon[text]` (transformers)") from e
        path = Path(path)
        tok_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path
        enc_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else path
        if not (enc_dir / "config.json").is_file():
            raise FileNotFoundError(f"umT5 encoder not found: {enc_dir} has no config.json (a Wan directory keeps it "
                                    "in text_encoder/)")
        if not any((tok_dir / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"umT5 tokenizer not found: {tok_dir} has none of {TOKENIZER_FILES} (a Wan "
                                    "directory keeps them in tokenizer/)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the umT5 tokenizer in {tok_dir}: {e}") from e
        try:
            encoder = UMT5EncoderModel.from_pretrained(enc_dir, local_files_only=True, torch_dtype=dtype,
                                                       use_safetensors=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the umT5 encoder in {enc_dir} (safetensors only): {e}") from e
        return cls(tokenizer, encoder.eval(), max_length)

    @torch.no_grad()
    def forward(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        t = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                           return_tensors="pt")
        dev = next(self.encoder.parameters()).device
        h = self.encoder(t.input_ids.to(dev), t.attention_mask.to(dev)).last_hidden_state
        # Wan zeroes the padded positions
        return h * t.attention_mask.to(dev).unsqueeze(-1).to(h.dtype)


class RandomTextEncoder(nn.Module):
    """Fixed random embeddings of the real text shape, for random-weight speed benchmarks only."""

    def __init__(self, max_length: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(max_length, dim, generator=g) * 0.1)

    def forward(self, prompts: list[str] | str) -> torch.Tensor:
        n = 1 if isinstance(prompts, str) else len(prompts)
        return self.table.unsqueeze(0).expand(n, -1, -1).clone()


def build_text_encoder(cfg: dict, path: str | Path | None = None, random_weights: bool = False):
    kind = cfg.get("kind", "learned")
    if kind == "learned":
        kw = {k: cfg[k] for k in ("vocab_size", "max_length", "dim") if k in cfg}
        if path is not None and not random_weights:
            return LearnedTextEncoder.from_pretrained(path, use_safetensors=True)
        return LearnedTextEncoder(**kw)
    if kind == "umt5":
        if random_weights or path is None:
            return RandomTextEncoder(cfg.get("max_length", 512), cfg.get("dim", 4096))
        return UMT5TextEncoder.from_pretrained(path, cfg.get("max_length", 512))
    raise ValueError(f"unknown text encoder kind {kind!r}")
