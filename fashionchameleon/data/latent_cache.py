"""Pre-encoded training clips: the frozen VAE's latents of a dataset, written once and read by every step.

Why: a teacher or teacher-forcing step spends a third of its CPU time in the frozen VAE's encoder, and on the GPU
(run 5) two thirds of it waiting for workers that render the world (docs/TRAINING.md). The latents do not change
while the VAE is frozen, so they are computed once (`python -m teacher.cache_latents`) and training reads them.

Folder layout:

    meta.json                  format, clip count, frames, size, latent shape, the VAE's fingerprint, provenance
    prompts.json               one prompt per clip
    shard_00000.safetensors    reference [n, z, 1, h, w], garment [n, z, 1, h, w], video [n, z, f, h, w],
    shard_00001.safetensors    and optional garment_cov / body_cov [n, 1, f, h, w] (mask coverage per latent cell)

A cache is tied to the VAE that wrote it: `LatentCache.check` refuses one whose fingerprint, frame count or size
differ from the stage that reads it (latents of another VAE are another latent space).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "fashionchameleon-latent-cache"
VERSION = 1
META_FILE = "meta.json"
PROMPTS_FILE = "prompts.json"
SHARD_PATTERN = "shard_{:05d}.safetensors"
LATENT_KEYS = ("reference", "garment", "video")
COVERAGE_KEYS = ("garment_cov", "body_cov")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LatentCacheError(ValueError):
    """A latent cache that is missing, corrupt, or does not fit the stage reading it."""


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, values): which weights wrote a cache. Floating tensors are
    hashed as float32, so the same weights stored in another precision or moved to another device match."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu()
        t = (t.float() if t.is_floating_point() else t).contiguous()
        h.update(f"{name}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LatentCacheWriter:
    """Appends batches and writes a shard every `shard_size` clips; `close()` writes the rest and meta.json last,
    so a folder without meta.json is an unfinished cache and is never read."""

    def __init__(self, root: str | os.PathLike, meta: dict[str, Any], shard_size: int = 1024,
                 dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        if (self.root / META_FILE).exists():
            raise FileExistsError(f"{self.root} already holds a latent cache; choose another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta)
        self.dtype = dtype
        self.shard_size = shard_size
        self.pending: dict[str, list[torch.Tensor]] = {}
        self.pending_n = 0
        self.prompts: list[str] = []
        self.shards: list[dict[str, Any]] = []
        self.keys: tuple[str, ...] | None = None

    def add(self, tensors: dict[str, torch.Tensor], prompts: list[str]) -> None:
        keys = tuple(sorted(tensors))
        if self.keys is None:
            missing = set(LATENT_KEYS) - set(keys)
            if missing:
                raise ValueError(f"a cache batch needs {LATENT_KEYS}; missing {sorted(missing)}")
            self.keys = keys
        elif keys != self.keys:
            raise ValueError(f"batch keys {keys} differ from the first batch's {self.keys}")
        n = tensors["video"].shape[0]
        if len(prompts) != n or any(t.shape[0] != n for t in tensors.values()):
            raise ValueError("every tensor and the prompt list must have one entry per clip")
        for k, t in tensors.items():
            self.pending.setdefault(k, []).append(t.detach().to("cpu", DTYPES[self.dtype]))
        self.prompts.extend(prompts)
        self.pending_n += n
        while self.pending_n >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        joined = {k: torch.cat(v) for k, v in self.pending.items()}
        out = {k: t[:n].contiguous() for k, t in joined.items()}
        self.pending = {k: [t[n:]] for k, t in joined.items()}
        self.pending_n -= n
        name = SHARD_PATTERN.format(len(self.shards))
        save_file(out, str(self.root / name))
        self.shards.append({"file": name, "clips": n})

    def close(self) -> dict[str, Any]:
        if self.pending_n:
            self._flush(self.pending_n)
        if not self.shards:
            raise ValueError("no clips were added; an empty cache is not written")
        (self.root / PROMPTS_FILE).write_text(json.dumps(self.prompts))
        meta = {"format": FORMAT, "version": VERSION, **self.meta, "clips": len(self.prompts), "dtype": self.dtype,
                "keys": list(self.keys or ()), "shards": self.shards}
        (self.root / META_FILE).write_text(json.dumps(meta, indent=1))
        return meta


def read_meta(root: str | os.PathLike) -> dict[str, Any]:
    root = Path(root)
    path = root / META_FILE
    if not root.is_dir():
        raise LatentCacheError(f"latent cache folder not found: {root}")
    if not path.is_file():
        raise LatentCacheError(f"{root} has no {META_FILE}: not a latent cache, or one that was never finished "
                               "(build it with `python -m teacher.cache_latents`)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LatentCacheError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LatentCacheError(f"{path} is not a {FORMAT} meta file")
    if meta.get("version") != VERSION:
        raise LatentCacheError(f"{path}: cache format version {meta.get('version')} is not {VERSION}; rebuild it")
    return meta


class LatentCache(torch.utils.data.Dataset):
    """The cached clips as a map-style dataset. Items carry the latents under their pixel names' `*_latent` keys,
    which `encode_batch` uses as is.

    A cache up to `max_memory_mb` is read into memory (a 21-frame tiny clip is ~0.2 MB in float32). A larger one is
    read one clip at a time from the memory-mapped shards, because real-size caches do not fit: an 81-frame
    1280x704 clip of the Wan2.2 VAE is ~7 MB in float16. `in_memory` forces either way.
    """

    def __init__(self, root: str | os.PathLike, in_memory: bool | None = None, max_memory_mb: float = 4096.0):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        try:
            self.prompts = json.loads((self.root / PROMPTS_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LatentCacheError(f"{self.root / PROMPTS_FILE} is missing or unreadable: {e}") from e
        self.paths = [self.root / shard["file"] for shard in self.meta["shards"]]
        for path in self.paths:
            if not path.is_file():
                raise LatentCacheError(f"latent cache shard missing: {path}")
        if in_memory is None:
            in_memory = sum(p.stat().st_size for p in self.paths) <= max_memory_mb * 2**20
        self.in_memory = in_memory
        self.keys = tuple(self.meta["keys"])
        n = self.meta["clips"]
        if self.in_memory:
            parts: dict[str, list[torch.Tensor]] = {}
            for shard, path in zip(self.meta["shards"], self.paths):
                tensors = self._open(path, lambda f: {k: f.get_tensor(k) for k in f.keys()})
                self._check_shard(path, shard["clips"], {k: t.shape[0] for k, t in tensors.items()})
                for k, t in tensors.items():
                    parts.setdefault(k, []).append(t)
            self.tensors = {k: torch.cat(v) for k, v in parts.items()}
        else:
            self.tensors = {}
            for shard, path in zip(self.meta["shards"], self.paths):
                lengths = self._open(path, lambda f: {k: f.get_slice(k).get_shape()[0] for k in f.keys()})
                self._check_shard(path, shard["clips"], lengths)
        # every shard holds the clips meta.json lists for it (checked above), so the shards' sum is the cache's size
        if len(self.prompts) != n or sum(s["clips"] for s in self.meta["shards"]) != n:
            raise LatentCacheError(f"{self.root}: shards and prompts do not add up to the {n} clips meta.json lists")
        # item i -> (shard, row) for the lazy path
        self._starts = list(itertools.accumulate((s["clips"] for s in self.meta["shards"]), initial=0))
        self._handles: dict[int, Any] = {}
        self._handles_pid: int | None = None

    @staticmethod
    def _open(path: Path, read):
        try:
            with safe_open(str(path), framework="pt") as f:
                return read(f)
        except (SafetensorError, OSError, ValueError) as e:
            raise LatentCacheError(f"latent cache shard {path} is corrupt: {e}") from e

    def _check_shard(self, path: Path, clips: int, lengths: dict[str, int]) -> None:
        if set(lengths) != set(self.keys):
            raise LatentCacheError(f"{path} holds {sorted(lengths)}, meta.json lists {list(self.keys)}")
        if any(n != clips for n in lengths.values()):
            raise LatentCacheError(f"{path} does not hold the {clips} clips meta.json lists")

    def _handle(self, shard: int):
        # one handle per shard and process: data-loader workers must not share the parent's
        if self._handles_pid != os.getpid():
            self._handles, self._handles_pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.paths[shard]), framework="pt")
        return self._handles[shard]

    def _row(self, key: str, i: int) -> torch.Tensor:
        if self.in_memory:
            return self.tensors[key][i]
        shard = bisect.bisect_right(self._starts, i) - 1
        j = i - self._starts[shard]
        return self._handle(shard).get_slice(key)[j:j + 1][0]

    def __len__(self) -> int:
        return self.meta["clips"]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} is out of range for a cache of {len(self)} clips")
        i %= len(self)
        item: dict[str, Any] = {f"{k}_latent": self._row(k, i) for k in LATENT_KEYS}
        item.update({k: self._row(k, i) for k in COVERAGE_KEYS if k in self.keys})
        item["prompt"] = self.prompts[i]
        return item

    def __getstate__(self) -> dict[str, Any]:
        # open safetensors handles do not pickle (spawned data-loader workers); each process reopens its own
        return {**self.__dict__, "_handles": {}, "_handles_pid": None}

    def check(self, *, vae_fingerprint: str, frames: int, height: int, width: int,
              coverage: tuple[str, ...] = ()) -> None:
        """Refuse a cache that the reading stage would misread (another VAE, clip length, size or missing masks)."""
        m = self.meta
        problems = []
        if m.get("vae_fingerprint") != vae_fingerprint:
            problems.append(f"it was encoded by another VAE (cache {m.get('vae')!r}, fingerprint "
                            f"{str(m.get('vae_fingerprint'))[:12]}…; this stage's VAE {vae_fingerprint[:12]}…)")
        if m.get("frames") != frames:
            problems.append(f"its clips have {m.get('frames')} frames, data.frames is {frames}")
        if (m.get("height"), m.get("width")) != (height, width):
            problems.append(f"its clips are {m.get('height')}x{m.get('width')}, the stage trains at {height}x{width}")
        for k in coverage:
            if k not in self.keys:
                problems.append(f"it has no {k} (built without those masks), but the loss weights them")
        if problems:
            raise LatentCacheError(f"latent cache {self.root} does not fit this stage: " + "; ".join(problems)
                                   + ". Rebuild it with `python -m teacher.cache_latents` and this config.")
