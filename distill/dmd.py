"""The (gradient-reweighted) DMD objective, as pure functions of tensors (paper §1.6).

    grad  = (x0_fake - x0_real) / mean|x_hat - x0_real|          (per sample, DMD eq. 8)
    loss  = 0.5 * sum_f A_f * mean_{c,h,w} (x_hat_f - sg(x_hat_f - grad_f))^2

With A_f = 1/F (tau = inf) this is vanilla DMD, 0.5 * mse(x_hat, sg(x_hat - grad)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from teacher.common import cfg_flow, garment_guided_flow, incontext_flow


def dmd_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    denom = (x.detach() - x0_real).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
    return (x0_fake - x0_real) / denom


def spatial_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over H, W of `[B,C,F,H,W]` (reflect padding; frames and channels independent).

    `sigma` in latent cells; 0 returns `x`. Used on the DMD gradient (`dmd.grad_lowpass`): only the teacher's
    coarse signal (colour, layout) is distilled, not its high-frequency texture."""
    if sigma <= 0:
        return x
    b, c, f, h, w = x.shape
    r = min(max(1, math.ceil(3 * sigma)), h - 1, w - 1)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = x.permute(0, 2, 1, 3, 4).reshape(b * f * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def weighted_dmd_loss(x: torch.Tensor, grad: torch.Tensor, weights: torch.Tensor,
                      spatial: torch.Tensor | None = None) -> torch.Tensor:
    """x, grad `[B,C,F,H,W]`; weights `[B,F]` (sum 1 per sample); `spatial` `[B,1,F,H,W]` scales each latent
    cell's share (its gradient is `spatial * grad * weights`), None = 1 everywhere."""
    target = (x - grad).detach()
    sq = (x.float() - target.float()).pow(2)
    if spatial is not None:
        sq = sq * spatial.to(sq.dtype)
    per_frame = sq.mean(dim=(1, 3, 4))  # [B, F]
    return 0.5 * (weights * per_frame).sum(dim=1).mean()


@torch.no_grad()
def real_x0(fm, real, ref, gar, x_t, t, text_c, text_u, guidance: float, garment_guidance: float = 1.0,
            gar_null: torch.Tensor | None = None) -> torch.Tensor:
    """x0 prediction of the real score (teacher, CFG; garment guidance when `garment_guidance` != 1)."""
    if garment_guidance != 1.0:
        if gar_null is None:
            raise ValueError("garment guidance needs the blank-garment latent gar_null")
        v = garment_guided_flow(real, ref, gar, gar_null, x_t, t, text_c, text_u, guidance, garment_guidance)
    else:
        v = cfg_flow(real, ref, gar, x_t, t, text_c, text_u, guidance)
    return fm.x0_from_flow(x_t, v, t)


@torch.no_grad()
def score_x0(fm, real, fake, ref, gar, x_t, t, text_c, text_u, guidance: float, garment_guidance: float = 1.0,
             gar_null: torch.Tensor | None = None, real_text: tuple[torch.Tensor, torch.Tensor] | None = None):
    """x0 predictions of the real score (teacher, CFG) and the fake score (critic, no CFG) on `[ref, gar, x_t]`.

    `garment_guidance` > 1 also extrapolates the real score away from the teacher's answer for a blank garment
    image `gar_null` (the letterbox canvas), so the student distils a teacher that follows the garment more.
    `real_text` is the real score's own (cond, uncond) embeddings where the teacher's text encoder is not the
    generator's (`text_c`, `text_u` are the generator's, which the critic reads); None: the same for both."""
    rc, ru = real_text if real_text is not None else (text_c, text_u)
    x0_real = real_x0(fm, real, ref, gar, x_t, t, rc, ru, guidance, garment_guidance, gar_null)
    return x0_real, fm.x0_from_flow(x_t, incontext_flow(fake, ref, gar, x_t, t, text_c), t)
