"""Flow matching: noise schedule with shift, training timesteps and weights, few-step and many-step samplers.

Convention (Wan / rectified flow): `x_t = (1 - s) x0 + s eps`, the model predicts `v = eps - x0`,
so `x0 = x_t - s v`. Timesteps live in `[0, num_train_timesteps]`; `s = t / num_train_timesteps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class FlowMatching:
    num_train_timesteps: int = 1000
    shift: float = 5.0

    # ------------------------------------------------------------------ schedule
    def shift_sigma(self, s: torch.Tensor | float) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=torch.float64)
        return self.shift * s / (1 + (self.shift - 1) * s)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64) / self.num_train_timesteps

    def warp(self, steps) -> torch.Tensor:
        """Map nominal steps (e.g. [1000, 750, 500, 250]) onto the shifted schedule (Self-Forcing's warp)."""
        s = torch.as_tensor(list(steps), dtype=torch.float64) / self.num_train_timesteps
        return (self.shift_sigma(s) * self.num_train_timesteps).float()

    def few_step_timesteps(self, steps, warp: bool = True) -> torch.Tensor:
        return self.warp(steps) if warp else torch.as_tensor(list(steps), dtype=torch.float32)

    # ------------------------------------------------------------------ noising
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        s = self._bcast(self.sigma(t), x0)
        return (1 - s) * x0 + s * noise

    def x0_from_flow(self, x_t: torch.Tensor, flow: torch.Tensor, t) -> torch.Tensor:
        s = self._bcast(self.sigma(t), x_t)
        return (x_t.double() - s.double() * flow.double()).to(x_t.dtype)

    def flow_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        s = self._bcast(self.sigma(t), x_t).double().clamp(min=1e-6)
        return ((x_t.double() - x0.double()) / s).to(x_t.dtype)

    @staticmethod
    def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`s` is a scalar, `[B]` or `[B, F]` (per frame of a `[B, C, F, H, W]` tensor)."""
        s = s.to(device=like.device, dtype=torch.float32)
        if s.ndim == 0:
            return s
        if s.ndim == 1:
            return s.view(-1, *([1] * (like.ndim - 1)))
        return s.view(s.shape[0], 1, s.shape[1], *([1] * (like.ndim - 3)))

    # ------------------------------------------------------------------ training
    def sample_train_timesteps(self, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Uniform over the 1000 training steps, then shifted (as the Wan trainers do)."""
        u = torch.randint(0, self.num_train_timesteps, shape, generator=generator)
        s = 1.0 - u.double() / self.num_train_timesteps
        return (self.shift_sigma(s) * self.num_train_timesteps).float().to(device)

    def bell_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Bell-shaped loss weight centred at t = T/2, minus its minimum, mean 1 over the shifted grid."""
        n = self.num_train_timesteps
        grid = self.shift_sigma(1.0 - torch.arange(n, dtype=torch.float64) / n) * n

        def bell(x):
            return torch.exp(-2 * ((x - n / 2) / n) ** 2)

        floor = bell(grid).min()
        norm = (bell(grid) - floor).mean()
        return ((bell(t.double().cpu()) - floor) / norm).float().to(t.device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0


def few_step_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    fm: FlowMatching,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """Self-Forcing sampler: predict x0 at each t, re-noise it to the next t with fresh noise.

    `denoise(x_t, t) -> flow prediction`. Returns the final x0.
    `eta` is the share of fresh noise in the re-noising (norm-preserving mix with the model's own noise estimate
    `eps_hat = x_t + (1 - s) v`): 1 = the Self-Forcing sampler, 0 = a deterministic Euler step of the flow ODE.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    x = noise
    x0 = noise
    for i, t in enumerate(timesteps):
        v = denoise(x, t)
        x0 = fm.x0_from_flow(x, v, t)
        if i + 1 < len(timesteps):
            if eta > 0:
                eps = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
            if eta < 1:
                eps_hat = x + (1 - fm._bcast(fm.sigma(t), x)) * v
                eps = eps_hat if eta == 0 else (1 - eta ** 2) ** 0.5 * eps_hat + eta * eps
            x = fm.add_noise(x0, eps, timesteps[i + 1])
    return x0


def make_teacher_scheduler(name: str, shift: float, num_train_timesteps: int = 1000):
    """diffusers schedulers for many-step teacher sampling: 'unipc' (paper's) or 'euler' ('renoise' needs none)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=shift, num_train_timesteps=num_train_timesteps)
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    raise ValueError(f"unknown teacher scheduler {name!r}; use 'unipc' or 'euler'")


@torch.no_grad()
def teacher_sample(
    flow_fn: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
    noise: torch.Tensor,
    steps: int = 50,
    guidance_scale: float = 3.0,
    scheduler: str = "unipc",
    shift: float = 5.0,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    stop_sigma: float = 0.0,
) -> torch.Tensor:
    """Many-step sampling with classifier-free guidance.

    `flow_fn(x_t, t, conditional) -> flow`; with `guidance_scale <= 1` only the conditional branch runs.
    `scheduler`: "unipc" / "euler" (diffusers ODE solvers), or "renoise": the students' stochastic sampler
    (predict x0, re-noise to the next t with fresh noise) over `steps` warped steps; it never integrates a velocity
    error, so a briefly trained model gives blurred rather than noise-textured samples. Its `eta` (1 = fresh noise
    every step, 0 = Euler) and `stop_sigma` (return the x0 predicted at the last step with sigma >= stop_sigma, i.e.
    skip the low-noise steps a briefly trained model gets wrong) trade structure against residual noise.
    """

    def guided(x, t):
        v = flow_fn(x, t, True)
        if guidance_scale > 1.0:
            v_u = flow_fn(x, t, False)
            v = v_u + guidance_scale * (v - v_u)
        return v

    if scheduler == "renoise":
        fm = FlowMatching(shift=shift)
        n = fm.num_train_timesteps
        nominal = torch.arange(steps, dtype=torch.float64) * (-n / steps) + n  # n, ..., n / steps
        ts = fm.warp(nominal.tolist())
        keep = ts >= stop_sigma * n
        if not bool(keep.any()):
            raise ValueError(f"stop_sigma={stop_sigma} leaves no sampling step")
        return few_step_sample(guided, noise, ts[keep], fm, generator=generator, eta=eta)
    if eta != 1.0 or stop_sigma:
        raise ValueError("eta / stop_sigma apply to the 'renoise' sampler only")
    sched = make_teacher_scheduler(scheduler, shift)
    sched.set_timesteps(steps, device=noise.device)
    x = noise
    for t in sched.timesteps:
        x = sched.step(guided(x, t), t, x, return_dict=False)[0]
    return x
