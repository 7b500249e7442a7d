"""One accelerate-based training harness for every stage (VAE, teacher, teacher forcing, DMD).

Design
------
A stage supplies models, a dataset and a *step function*; the `Trainer` owns everything else::

    cfg = TrainConfig(output_dir="runs/x", max_steps=1000, lr=1e-3, ema_models=["vae"])
    def step_fn(ctx: StepContext, batch) -> dict:
        recon, _ = ctx.models["vae"](batch["video"])
        loss = (recon - batch["video"]).abs().mean()
        ctx.update("vae", loss)            # backward + clip + optimizer/scheduler step (once per optimizer step)
        return {"loss": loss}              # scalars go to log.csv / tqdm
    Trainer(cfg, models={"vae": vae}, step_fn=step_fn, train_data=dataset).train()

* `models`: name -> nn.Module. Models with trainable parameters get an optimizer (AdamW from the config unless
  `optimizers` is given) and an LR schedule (warmup + cosine / step / constant) and go through
  `accelerator.prepare` (DDP/FSDP-safe); frozen models (e.g. a DMD real-score teacher) are only moved to the device.
* `ctx.update(name, loss)` may be called for several optimizers in any order (e.g. critic then generator). If the
  step function calls no update, returns a tensor `"loss"` and there is exactly one optimizer, it is updated for you.
* Mixed precision: `"auto"` = bf16 on CUDA, "no" on CPU. Gradient accumulation via `accelerator.accumulate`.
* EMA (`ema_models`, `ema_decay`, `ema_start_step`): fp32 shadows of the trainable parameters; before the start
  step the shadow tracks the weights exactly.
* Exact resume: the RNGs are reseeded from (seed, step, micro-step, rank) before every step function call and the
  data order is a pure function of (seed, epoch), so `--resume` continues bit-identically on a fixed setup.
* Checkpoints `output_dir/step_XXXXXX/`: `accelerator.save_state` (model weights as safetensors, optimizer,
  scheduler, RNG), `ema_rank{r}.safetensors`, `trainer_state.json`, and inference exports `<name>/` and
  `<name>_ema/` (diffusers layout `config.json` + `diffusion_pytorch_model.safetensors` for ModelMixin models,
  `model.safetensors` otherwise). The last `keep_checkpoints` are kept.
* Logs: tqdm (main process), `log.csv` (step, loss, lr, grad_norm, samples_seen, elapsed_s, + extra scalars),
  `eval.jsonl` from the optional `eval_fn(trainer) -> dict`.
* Configs: YAML sections map onto dataclasses with `load_yaml_config`; unknown keys and ill-typed values raise.
* Multi-process: run the same script under `accelerate launch` (DDP/FSDP on GPUs) or, on CPU,
  `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N` (gloo DDP; every stage is checked by
  tests/test_multiprocess.py, resume included). Step functions must call prepared models through their wrapper's
  forward (DDP reduces only those gradients); `full_copy` / exports are collective (FSDP gathers the full state).
  A checkpoint resumes only with the process count that wrote it (per-rank EMA and RNG files).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

__all__ = ["apply_cli_overrides", "TrainConfig", "Trainer", "StepContext", "EMA", "load_yaml_config", "dataclass_from_dict", "latest_checkpoint"]

_STEP_PREFIX = "step_"
_SCHEDULES = ("constant", "cosine", "step")
_PRECISIONS = ("auto", "no", "fp16", "bf16")
_FROZEN_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    max_steps: int = 1000
    batch_size: int = 4
    num_workers: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_schedule: str = "cosine"  # constant | cosine | step
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    lr_step_size: int = 1000  # "step" schedule: multiply by lr_gamma every lr_step_size steps
    lr_gamma: float = 0.5
    grad_clip: float = 1.0  # <= 0 disables clipping
    grad_accum_steps: int = 1
    mixed_precision: str = "auto"
    # storage dtype of the frozen models the trainer holds (a DMD real-score teacher): "auto" = the mixed
    # precision's dtype (bf16 / fp16) when it is on, else fp32. They only run forwards under autocast, so fp32
    # copies would double their memory for nothing (20 GB against 10 GB for a frozen 5B teacher).
    frozen_dtype: str = "auto"
    ema_models: list[str] = field(default_factory=list)
    ema_decay: float = 0.999
    ema_start_step: int = 0
    save_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    seed: int = 0
    num_threads: int = 0  # 0: leave torch's default
    max_minutes: float = 0.0  # > 0: stop (checkpoint, final eval) after this much wall time; fits a GPU lease
    # Each loaded micro-batch is used for this many consecutive micro-batches (fresh noise and timesteps each
    # time: the step RNG is reseeded per micro-batch). For a data-bound GPU run that renders clips on the fly;
    # `samples_seen` counts echoed samples too.
    data_echo: int = 1

    def __post_init__(self):
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision not in _PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {_PRECISIONS}, got {self.mixed_precision!r}")
        if self.frozen_dtype not in _FROZEN_DTYPES:
            raise ValueError(f"frozen_dtype must be one of {sorted(_FROZEN_DTYPES)}, got {self.frozen_dtype!r}")
        for name in ("max_steps", "batch_size", "grad_accum_steps", "save_every", "log_every", "lr_step_size",
                     "data_echo"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "ema_start_step", "eval_every", "num_threads", "num_workers", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0, got {self.max_minutes}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if len(self.betas) != 2:
            raise ValueError(f"betas needs 2 values, got {self.betas}")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check_type(value, arm, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(f"{where}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is not None:
            raise TypeError(f"{where}: expected null, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: {value!r} not in {typing.get_args(tp)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        arm = args[0] if args else Any
        return [_check_type(v, arm, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return dataclass_from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise TypeError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def dataclass_from_dict(cls: type, data: Mapping[str, Any] | None, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys or wrongly typed values raise ValueError/TypeError."""
    where = where or cls.__name__
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e


def load_yaml_config(path: str | os.PathLike, sections: Mapping[str, type],
                     other_sections: bool = False) -> dict[str, Any]:
    """Load a YAML file whose top-level keys are `sections` (name -> dataclass); missing sections use defaults.
    `other_sections`: ignore the file's other sections (a tool reading only part of a stage's config)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: top level must be a mapping of sections {sorted(sections)}")
    unknown = sorted(set(raw) - set(sections))
    if unknown and not other_sections:
        raise ValueError(f"{p}: unknown section(s) {unknown}; valid sections: {sorted(sections)}")
    out: dict[str, Any] = {}
    for name, cls in sections.items():
        value = raw.get(name)
        if cls is dict:  # free-form section (e.g. model kwargs checked by the model itself)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{p}: section {name!r} must be a mapping, got {value!r}")
            out[name] = dict(value or {})
        else:
            out[name] = dataclass_from_dict(cls, value, f"{p.name}:{name}")
    return out


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


class EpochSampler(Sampler[int]):
    """Shuffled order that is a pure function of (seed, epoch): required for exact resume.

    `epoch_indexed`: yield `epoch * n + i` instead of `i`, for datasets that vary an item by epoch (a random
    temporal window per visit) and so must know the epoch in every worker; they take `i % n` as the item."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, epoch_indexed: bool = False):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.epoch_indexed = epoch_indexed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            order = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        base = self.epoch * self.n if self.epoch_indexed else 0
        return iter([base + i for i in order])


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        if cfg.lr_schedule == "step":
            return cfg.lr_gamma ** ((step - cfg.warmup_steps) // cfg.lr_step_size)
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return fn


def _single_threaded(_worker: int) -> None:
    """One torch thread per data worker, or N workers x N threads thrash the cores. (Not cv2.setNumThreads: in a
    worker forked after the parent used OpenCV's pool, e.g. to render eval examples, it deadlocks.)"""
    torch.set_num_threads(1)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _local(t: torch.Tensor) -> torch.Tensor:
    # DTensor (FSDP2) shards -> plain local tensor
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """Exponential moving average of a module's trainable parameters (fp32 shadows, rank-local under FSDP)."""

    def __init__(self, model: nn.Module, decay: float, start_step: int):
        self.decay, self.start_step = decay, start_step
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = [_local(p.detach()).float().clone() for p in self._params(model)]

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        named = dict(model.named_parameters())
        return [named[n] for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = 0.0 if step < self.start_step else self.decay
        for s, p in zip(self.shadow, self._params(model)):
            s.lerp_(_local(p.detach()).float(), 1.0 - decay)

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange model weights and shadows (call twice to undo)."""
        for i, p in enumerate(self._params(model)):
            lp = _local(p.data)
            cur = lp.clone()
            lp.copy_(self.shadow[i].to(lp.dtype))
            self.shadow[i] = cur.float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: s.contiguous() for n, s in zip(self.names, self.shadow)}

    def load_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in sd]
        if missing:
            raise ValueError(f"EMA state lacks {missing[:5]}")
        self.shadow = [sd[n].float().clone().to(s.device) for n, s in zip(self.names, self.shadow)]


def fresh_module(m: nn.Module) -> nn.Module:
    """An independent module shaped like `m` (weights to be loaded): `m.fresh()`, `from_config`, or a deepcopy."""
    if hasattr(m, "fresh"):
        return m.fresh()
    if hasattr(type(m), "from_config") and hasattr(m, "config"):
        return type(m).from_config(m.config)
    return copy.deepcopy(m)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    d = Path(output_dir)
    steps = sorted(p for p in d.glob(f"{_STEP_PREFIX}*") if (p / "trainer_state.json").is_file())
    return steps[-1] if steps else None


def _first_batch_size(batch: Any) -> int:
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        for v in batch.values():
            n = _first_batch_size(v)
            if n:
                return n
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = _first_batch_size(v)
            if n:
                return n
    return 0


# --------------------------------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------------------------------


class StepContext:
    """What a step function sees: prepared models, the accelerator, the step index, and `update`."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.accelerator = trainer.accelerator
        self.models = trainer.models
        self.step = trainer.step
        self.grad_norms: dict[str, float] = {}
        self.updated: set[str] = set()

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backward `loss` and, on a sync step, clip + step optimizer `name` and its scheduler."""
        tr = self.trainer
        if name not in tr.optimizers:
            raise KeyError(f"no optimizer named {name!r}; have {sorted(tr.optimizers)}")
        self.updated.add(name)
        with torch.autocast(self.device.type, enabled=False):  # the step runs under autocast; backward should not
            tr.accelerator.backward(loss)
        if not tr.accelerator.sync_gradients:
            return
        params = [p for p in tr.models[name].parameters() if p.requires_grad]
        if tr.config.grad_clip > 0:
            gn = tr.accelerator.clip_grad_norm_(params, tr.config.grad_clip)
        else:
            grads = [p.grad.detach().norm() for p in params if p.grad is not None]
            gn = torch.stack(grads).norm() if grads else torch.zeros(())
        self.grad_norms[name] = float(gn)
        tr.optimizers[name].step()
        tr.schedulers[name].step()
        tr.optimizers[name].zero_grad(set_to_none=True)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        models: Mapping[str, nn.Module],
        step_fn: Callable[[StepContext, Any], Mapping[str, Any]],
        train_data: Dataset | DataLoader,
        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
        eval_fn: Callable[["Trainer"], Mapping[str, Any]] | None = None,
        collate_fn: Callable | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        mp = config.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() else "no"
        self.accelerator = accelerator or Accelerator(
            mixed_precision=mp,
            gradient_accumulation_steps=config.grad_accum_steps,
            step_scheduler_with_optimizer=False,
            rng_types=[],  # we reseed per step instead
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False),
        )
        acc = self.accelerator
        if acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs ("no") use the tensor cores too
            torch.backends.cudnn.allow_tf32 = True
        self.output_dir = Path(config.output_dir)
        self.step_fn, self.eval_fn = step_fn, eval_fn
        self.step, self.samples_seen, self.elapsed_s = 0, 0, 0.0
        _seed_all(config.seed)

        unknown = sorted(set(config.ema_models) - set(models))
        if unknown:
            raise ValueError(f"ema_models {unknown} are not among the models {sorted(models)}")
        given = dict(optimizers or {})
        trainable = [n for n, m in models.items() if n in given or any(p.requires_grad for p in m.parameters())]
        self.optimizers: dict[str, Any] = {}
        self.schedulers: dict[str, Any] = {}
        self.models: dict[str, nn.Module] = {}
        # "auto": the mixed precision's dtype ("bf16" / "fp16" are keys of the same table), else fp32
        self.frozen_dtype = (_FROZEN_DTYPES[config.frozen_dtype] or _FROZEN_DTYPES.get(acc.mixed_precision)
                             or torch.float32)
        for name, m in models.items():
            if name not in trainable:
                self.models[name] = m.to(acc.device, self.frozen_dtype)
                continue
            opt = given.get(name) or torch.optim.AdamW(
                [p for p in m.parameters() if p.requires_grad], lr=config.lr, betas=tuple(config.betas),
                weight_decay=config.weight_decay,
            )
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config))
            self.models[name], self.optimizers[name], self.schedulers[name] = acc.prepare(m, opt, sched)
        self.ema = {n: EMA(acc.unwrap_model(self.models[n]), config.ema_decay, config.ema_start_step)
                    for n in config.ema_models}

        if isinstance(train_data, DataLoader):
            self._sampler = None
            self.dataloader = acc.prepare(train_data)
        else:
            self._sampler = EpochSampler(len(train_data), config.seed,
                                         epoch_indexed=bool(getattr(train_data, "epoch_indexed", False)))
            dl = DataLoader(train_data, batch_size=config.batch_size, sampler=self._sampler, drop_last=True,
                            num_workers=config.num_workers, collate_fn=collate_fn,
                            worker_init_fn=_single_threaded if config.num_workers else None,
                            persistent_workers=config.num_workers > 0)
            self.dataloader = acc.prepare(dl)
        if len(self.dataloader) < config.grad_accum_steps:
            raise ValueError(f"dataset too small: {len(self.dataloader)} batches per epoch for "
                             f"grad_accum_steps={config.grad_accum_steps}")

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def full_state_dict(self, name: str, ema: bool = False) -> dict[str, torch.Tensor] | None:
        """Model `name`'s full weights (its EMA weights if `ema` and tracked) as private contiguous CPU tensors on the
        main process; None on the others. Collective: every process must call it (FSDP gathers the shards)."""
        acc = self.accelerator
        prepared = self.models[name]
        swap = ema and name in self.ema
        if swap:
            self.ema[name].swap(acc.unwrap_model(prepared))
        try:
            sd = acc.get_state_dict(prepared)  # accelerate asks FSDP for the full state dict (rank 0)
            if acc.is_main_process:  # copied before the weights swap back
                sd = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}
        finally:
            if swap:
                self.ema[name].swap(acc.unwrap_model(prepared))
        return sd if acc.is_main_process else None

    def full_copy(self, name: str, ema: bool = False) -> nn.Module | None:
        """A standalone CPU module holding `full_state_dict(name, ema)` on the main process; None on the others
        (collective). Built by the model's `fresh()` if it has one, else `from_config` (ModelMixin), else deepcopy
        (exact for plain and DDP models only)."""
        sd = self.full_state_dict(name, ema)
        if sd is None:
            return None
        fresh = fresh_module(self.accelerator.unwrap_model(self.models[name]))
        fresh.load_state_dict(sd, strict=True)
        return fresh.cpu()

    def export_model(self, name: str, dest: str | os.PathLike, ema: bool = False) -> None:
        """Write model `name` (or its EMA weights) as a standalone folder (diffusers layout for ModelMixin);
        collective, the main process writes."""
        sd = self.full_state_dict(name, ema)
        if sd is None:
            return
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.models[name])
        if hasattr(model, "save_config"):
            from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

            model.save_config(str(dest))
            save_file(sd, str(dest / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            save_file(sd, str(dest / "model.safetensors"), metadata={"format": "pt"})

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        d = self.output_dir / f"{_STEP_PREFIX}{self.step:06d}"
        acc.wait_for_everyone()
        acc.save_state(str(d), safe_serialization=True)
        for name, e in self.ema.items():
            save_file(e.state_dict(), str(d / f"ema_{name}_rank{acc.process_index}.safetensors"))
        for name in self.optimizers:
            self.export_model(name, d / name)
            if name in self.ema:
                self.export_model(name, d / f"{name}_ema", ema=True)
        if acc.is_main_process:
            state = {"step": self.step, "samples_seen": self.samples_seen, "elapsed_s": self.elapsed_s,
                     "num_processes": acc.num_processes, "config": dataclasses.asdict(self.config)}
            (d / "trainer_state.json").write_text(json.dumps(state, indent=2))
            self._prune()
        acc.wait_for_everyone()
        return d

    def _prune(self) -> None:
        if not self.config.keep_checkpoints:
            return
        steps = sorted(p for p in self.output_dir.glob(f"{_STEP_PREFIX}*") if p.is_dir())
        for old in steps[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> Path | None:
        """Restore from `path` (a step folder) or the latest one in output_dir; returns it (None if none)."""
        acc = self.accelerator
        d = Path(path) if path is not None else latest_checkpoint(self.output_dir)
        if d is None:
            return None
        if not (d / "trainer_state.json").is_file():
            raise FileNotFoundError(f"not a trainer checkpoint (no trainer_state.json): {d}")
        state = json.loads((d / "trainer_state.json").read_text())
        if state["num_processes"] != acc.num_processes:
            raise ValueError(f"{d} was written with {state['num_processes']} processes; now {acc.num_processes}")
        acc.load_state(str(d))
        for name, e in self.ema.items():
            f = d / f"ema_{name}_rank{acc.process_index}.safetensors"
            if not f.is_file():
                raise FileNotFoundError(f"EMA state missing: {f}")
            e.load_state_dict(load_file(str(f)))
        self.step, self.samples_seen, self.elapsed_s = state["step"], state["samples_seen"], state["elapsed_s"]
        return d

    # -- logging ----------------------------------------------------------------------------------------------------
    def _log_row(self, row: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        f = self.output_dir / "log.csv"
        base = ["step", "loss", "lr", "grad_norm", "samples_seen", "elapsed_s"]
        if f.is_file() and f.stat().st_size:
            with f.open() as fh:
                header = next(csv.reader(fh))
            new = sorted(k for k in row if k not in header)
            if new:  # e.g. the generator's loss after a critic-only warm-up: widen the header, pad the old rows
                with f.open() as fh:
                    rows = list(csv.reader(fh))[1:]
                header = header + new
                with f.open("w", newline="") as fh:
                    csv.writer(fh).writerows([header] + [r + [""] * len(new) for r in rows])
        else:
            header = base + sorted(k for k in row if k not in base)
            with f.open("w", newline="") as fh:
                csv.writer(fh).writerow(header)
        with f.open("a", newline="") as fh:
            csv.writer(fh).writerow([_fmt(row.get(k, "")) for k in header])

    def _truncate_log(self) -> None:
        # drop rows written after the checkpoint we resume from
        f = self.output_dir / "log.csv"
        if not (self.accelerator.is_main_process and f.is_file()):
            return
        rows = list(csv.reader(f.open()))
        if not rows:
            return
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= self.step]
        with f.open("w", newline="") as fh:
            csv.writer(fh).writerows(keep)

    def run_eval(self) -> dict[str, Any]:
        if self.eval_fn is None:
            return {}
        res = dict(self.eval_fn(self))
        if self.accelerator.is_main_process:
            with (self.output_dir / "eval.jsonl").open("a") as fh:
                fh.write(json.dumps({"step": self.step, **res}) + "\n")
        return res

    # -- loop -------------------------------------------------------------------------------------------------------
    def _batches(self) -> Iterable[Any]:
        """Infinite batch stream starting at the micro-batch matching self.step (exact resume), each loaded batch
        repeated `data_echo` times."""
        per_epoch = len(self.dataloader)
        echo = self.config.data_echo
        loaded, used = divmod(self.step * self.config.grad_accum_steps, echo)  # `used` echoes of it already ran
        epoch, skip = divmod(loaded, per_epoch)
        while True:
            if self._sampler is not None:
                self._sampler.set_epoch(epoch)
            if hasattr(self.dataloader, "set_epoch"):
                self.dataloader.set_epoch(epoch)
            dl = self.accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            for batch in dl:
                for _ in range(echo - used):
                    yield batch
                used = 0
            epoch, skip = epoch + 1, 0

    def _out_of_time(self, deadline: float) -> bool:
        """Every rank must stop at the same step, so the main rank's clock decides."""
        late = torch.tensor([float(time.perf_counter() >= deadline)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            late = self.accelerator.reduce(late, reduction="max")
        return bool(late.item())

    def train(self, resume: bool | str | os.PathLike = False, until: int | None = None) -> dict[str, Any]:
        """Train to `config.max_steps` (or stop early at step `until`, saving there; the schedule is unchanged)."""
        acc, cfg = self.accelerator, self.config
        stop = min(cfg.max_steps, until) if until is not None else cfg.max_steps
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        if resume:
            d = self.load_checkpoint(None if resume is True else resume)
            if d is not None:
                acc.print(f"resumed from {d} at step {self.step}")
                self._truncate_log()
        for m in self.models.values():
            m.train()
        ema_targets = {n: acc.unwrap_model(self.models[n]) for n in self.ema}
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not acc.is_main_process, desc="train",
                   dynamic_ncols=True)
        window: dict[str, list[float]] = {}
        micro = 0
        t_last = time.perf_counter()
        batches = iter(self._batches())
        last: dict[str, Any] = {}
        deadline = time.perf_counter() + 60.0 * cfg.max_minutes if cfg.max_minutes > 0 else None
        while self.step < stop:
            t_wait = time.perf_counter()
            batch = next(batches)
            # host time blocked on the data loader: tells a data-bound GPU run from a compute-bound one
            window.setdefault("data_s", []).append(time.perf_counter() - t_wait)
            _seed_all(((cfg.seed * 1_000_003 + self.step) * 64 + micro) * 4096 + acc.process_index)
            trainable = [self.models[n] for n in self.optimizers]
            # autocast over the whole step: frozen models (a DMD teacher, the VAE, umT5) and any call that does
            # not go through a prepared model's forward run in the mixed precision too (a no-op with "no")
            with acc.accumulate(*trainable), acc.autocast():
                ctx = StepContext(self)
                out = dict(self.step_fn(ctx, batch) or {})
                if not ctx.updated:
                    if len(self.optimizers) != 1 or not torch.is_tensor(out.get("loss")):
                        raise RuntimeError("step_fn called no ctx.update(); that is only automatic for a single "
                                           "optimizer and a returned tensor 'loss'")
                    ctx.update(next(iter(self.optimizers)), out["loss"])
            for k, v in out.items():
                if torch.is_tensor(v) and v.numel() != 1:
                    continue
                window.setdefault(k, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))
            micro += 1
            if not acc.sync_gradients:
                continue
            micro = 0
            self.samples_seen += _first_batch_size(batch) * acc.num_processes * cfg.grad_accum_steps
            self.step += 1
            for n, e in self.ema.items():
                e.update(ema_targets[n], self.step)
            now = time.perf_counter()
            self.elapsed_s += now - t_last
            t_last = now
            first_opt = next(iter(self.optimizers))
            gn = ctx.grad_norms.get(first_opt, float("nan"))
            last = {k: float(np.mean(v)) for k, v in window.items()}
            bar.update(1)
            if deadline is not None and self._out_of_time(deadline):
                acc.print(f"max_minutes={cfg.max_minutes:g} reached at step {self.step}; stopping")
                stop = self.step  # the usual stop-step paths below log, skip the eval and checkpoint
            if self.step % cfg.log_every == 0 or self.step == stop:
                row = {"step": self.step, "lr": self.schedulers[first_opt].get_last_lr()[0], "grad_norm": gn,
                       "samples_seen": self.samples_seen, "elapsed_s": self.elapsed_s, **last}
                for n, g in ctx.grad_norms.items():
                    if n != first_opt:
                        row[f"grad_norm_{n}"] = g
                self._log_row(row)
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()})
                window = {}
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < stop:
                self.run_eval()
                t_last = time.perf_counter()  # eval time does not count as training time
            if self.step % cfg.save_every == 0 or self.step == stop:
                self.save_checkpoint()
                t_last = time.perf_counter()
        bar.close()
        result = self.run_eval()
        acc = self.accelerator
        # what actually ran: accelerate falls back silently (e.g. FSDP flags on CPU give DDP, or nothing at all)
        ran = {"distributed_type": str(acc.distributed_type).split(".")[-1], "num_processes": acc.num_processes,
               "mixed_precision": acc.mixed_precision}
        return {"step": self.step, "samples_seen": self.samples_seen, "elapsed_s": self.elapsed_s, **last, **result,
                **ran}


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def apply_cli_overrides(cfg: "TrainConfig", smoke=None, max_steps: int | None = None,
                        output_dir: str | None = None, num_threads: int | None = None,
                        max_minutes: float | None = None, batch_size: int | None = None,
                        num_workers: int | None = None, data_echo: int | None = None,
                        lr: float | None = None, mixed_precision: str | None = None) -> "TrainConfig":
    """The train-section overrides every entry point shares (--smoke / --max-steps / --out / --threads /
    --max-minutes / --batch-size / --workers / --data-echo / --lr / --mixed-precision); sets the CPU threads.

    `smoke` is a stage's smoke section (needs `max_steps` and `batch_size`).
    """
    over: dict[str, Any] = {}
    if smoke is not None:
        over.update(max_steps=smoke.max_steps, batch_size=smoke.batch_size, save_every=smoke.max_steps,
                    eval_every=0, log_every=1, warmup_steps=min(cfg.warmup_steps, smoke.max_steps // 2))
    if max_steps is not None:
        over["max_steps"] = max_steps
    if output_dir:
        over["output_dir"] = output_dir
    if num_threads:
        over["num_threads"] = num_threads
    for k, v in (("max_minutes", max_minutes), ("batch_size", batch_size), ("num_workers", num_workers),
                 ("data_echo", data_echo), ("lr", lr), ("mixed_precision", mixed_precision)):
        if v is not None:
            over[k] = v
    cfg = dataclass_from_dict(TrainConfig, {**vars(cfg), **over})
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return cfg

