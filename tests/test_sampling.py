"""Flow matching: shift, warped few-step list, x0 <-> flow, bell weighting, samplers."""

import pytest
import torch

from fashionchameleon.sampling import FlowMatching, few_step_sample, teacher_sample


def test_warped_default_steps_match_paper():
    fm = FlowMatching(1000, shift=5.0)
    t = fm.few_step_timesteps([1000, 750, 500, 250], warp=True)
    assert t.tolist() == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    assert fm.few_step_timesteps([1000, 750], warp=False).tolist() == [1000.0, 750.0]


def test_noise_and_x0_roundtrip_per_frame():
    fm = FlowMatching()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 5, 5, generator=g), torch.randn(2, 4, 3, 5, 5, generator=g)
    t = torch.tensor([[0.0, 400.0, 999.0], [10.0, 500.0, 700.0]])
    xt = fm.add_noise(x0, eps, t)
    assert torch.allclose(xt[:, :, 0][0], x0[:, :, 0][0])  # t=0 leaves the frame clean
    v = fm.training_target(x0, eps)
    assert torch.allclose(fm.x0_from_flow(xt, v, t), x0, atol=1e-5)
    assert torch.allclose(fm.flow_from_x0(xt, x0, t)[:, :, 1:], v[:, :, 1:], atol=1e-4)


def test_bell_weight_peaks_mid_and_is_normalised():
    fm = FlowMatching()
    t = torch.tensor([20.0, 500.0, 980.0])
    w = fm.bell_weight(t)
    assert w[1] > w[0] and w[1] > w[2]
    grid = fm.sample_train_timesteps((20000,), generator=torch.Generator().manual_seed(0))
    assert 0.9 < fm.bell_weight(grid).mean().item() < 1.1
    assert grid.min() >= 0 and grid.max() <= 1000


def test_few_step_sampler_with_oracle_recovers_x0():
    fm = FlowMatching()
    x0 = torch.randn(1, 4, 2, 3, 3)

    def oracle(x, t):  # exact flow for a known x0
        return fm.flow_from_x0(x, x0, t)

    out = few_step_sample(oracle, torch.randn_like(x0), fm.few_step_timesteps([1000, 750, 500, 250]), fm,
                          generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, x0, atol=1e-4)


@pytest.mark.parametrize("sched", ["unipc", "euler", "renoise"])
def test_teacher_sampler_with_cfg_reaches_target(sched):
    target = torch.full((1, 4, 2, 3, 3), 0.5)

    def flow(x, t, conditional):  # conditional branch points at `target`, unconditional at 0
        s = float(t) / 1000
        goal = target if conditional else torch.zeros_like(target)
        return (x - goal) / max(s, 1e-3)

    out = teacher_sample(flow, torch.randn(1, 4, 2, 3, 3), steps=30, guidance_scale=1.0, scheduler=sched)
    assert torch.allclose(out, target, atol=5e-2)
    guided = teacher_sample(flow, torch.randn(1, 4, 2, 3, 3), steps=30, guidance_scale=2.0, scheduler=sched)
    assert guided.mean() > out.mean()  # CFG extrapolates away from the unconditional answer


def _toy_flow(x, t):
    """A non-oracle flow, so that samplers that differ give different answers."""
    s = float(t) / 1000
    return torch.tanh(x) * (0.5 + s) + 0.1 * x ** 2


def test_renoise_eta_zero_is_an_euler_step_and_eta_one_is_fresh_noise():
    fm = FlowMatching(shift=3.0)
    ts = fm.few_step_timesteps([1000, 800, 600, 400, 200])
    noise = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))

    x = noise.clone()  # eta = 0: x_{t'} = x_t + (s' - s) v, the flow ODE's Euler step
    for i, t in enumerate(ts):
        v = _toy_flow(x, t)
        if i + 1 == len(ts):
            ref0 = fm.x0_from_flow(x, v, t)
        else:
            x = x + (float(ts[i + 1]) - float(t)) / 1000 * v
    out0 = few_step_sample(_toy_flow, noise, ts, fm, generator=torch.Generator().manual_seed(1), eta=0.0)
    assert torch.allclose(out0, ref0, atol=1e-5)

    g = torch.Generator().manual_seed(1)  # eta = 1: the Self-Forcing sampler, fresh noise every step
    x = noise.clone()
    for i, t in enumerate(ts):
        x0 = fm.x0_from_flow(x, _toy_flow(x, t), t)
        if i + 1 < len(ts):
            x = fm.add_noise(x0, torch.randn(x0.shape, generator=g), ts[i + 1])
    out1 = few_step_sample(_toy_flow, noise, ts, fm, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out1, x0)
    half = few_step_sample(_toy_flow, noise, ts, fm, generator=torch.Generator().manual_seed(1), eta=0.5)
    assert not torch.allclose(half, out0, atol=1e-3) and not torch.allclose(half, out1, atol=1e-3)


def test_renoise_stop_sigma_returns_the_x0_of_the_last_kept_step():
    fm = FlowMatching(shift=5.0)
    noise = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))

    def flow(x, t, conditional):
        return _toy_flow(x, t)

    nominal = torch.arange(10, dtype=torch.float64) * -100 + 1000
    ts = fm.warp(nominal.tolist())
    kept = ts[ts >= 0.6 * 1000]
    assert 0 < len(kept) < len(ts)
    want = few_step_sample(_toy_flow, noise, kept, fm, generator=torch.Generator().manual_seed(2), eta=0.3)
    got = teacher_sample(flow, noise, steps=10, guidance_scale=1.0, scheduler="renoise", shift=5.0,
                         generator=torch.Generator().manual_seed(2), eta=0.3, stop_sigma=0.6)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="leaves no sampling step"):
        teacher_sample(flow, noise, steps=10, guidance_scale=1.0, scheduler="renoise", stop_sigma=1.01)
    with pytest.raises(ValueError, match="eta must be in"):
        teacher_sample(flow, noise, steps=10, guidance_scale=1.0, scheduler="renoise", eta=1.5)
    with pytest.raises(ValueError, match="'renoise' sampler only"):
        teacher_sample(flow, noise, steps=10, guidance_scale=1.0, scheduler="euler", eta=0.5)
