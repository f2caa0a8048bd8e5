"""The release's sampler schedule and guidance formula."""

import pytest
import torch

from fantasy.model.sampling import combine_guidance, make_scheduler, passes_needed, set_official_timesteps


def test_schedule_matches_the_release():
    scheduler = make_scheduler()
    timesteps = set_official_timesteps(scheduler, 30)
    assert len(timesteps) == 30
    # Reference §3.4: 1000.0, 993.15, 985.92, ..., 357.14, 263.16, 147.06 (fp32 timesteps against the 4-decimal
    # table: measured 1.2e-4 off at most)
    torch.testing.assert_close(timesteps[:3], torch.tensor([1000.0, 993.1507, 985.9155]), atol=2.5e-4, rtol=0)
    torch.testing.assert_close(timesteps[-3:], torch.tensor([357.1429, 263.1579, 147.0588]), atol=2.5e-4, rtol=0)
    s = torch.linspace(1, 0, 31)[:-1].double()
    # fp32 sigmas against the float64 formula: measured 1.1e-7
    torch.testing.assert_close(scheduler.sigmas[:-1].double(), 5 * s / (1 + 4 * s), atol=2.2e-7, rtol=0)
    assert scheduler.sigmas[-1] == 0


def test_euler_step_is_x_plus_v_times_dsigma():
    scheduler = make_scheduler()
    timesteps = set_official_timesteps(scheduler, 4)
    x = torch.randn(1, 16, 2, 4, 4)
    v = torch.randn_like(x)
    out = scheduler.step(v, timesteps[0], x, return_dict=False)[0]
    torch.testing.assert_close(out, x + v * (scheduler.sigmas[1] - scheduler.sigmas[0]))


def test_stochastic_step_renoises_the_clean_estimate():
    """The few-step models' sampler: x0 = x - sigma v, then (1 - sigma_next) x0 + sigma_next * fresh noise."""
    scheduler = make_scheduler(stochastic=True)
    timesteps = set_official_timesteps(scheduler, 4)
    x = torch.randn(1, 16, 2, 4, 4)
    v = torch.randn_like(x)
    out = scheduler.step(v, timesteps[0], x, generator=torch.Generator().manual_seed(7), return_dict=False)[0]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    sigma, following = scheduler.sigmas[0], scheduler.sigmas[1]
    # the same expression in the same order as diffusers: bit for bit
    torch.testing.assert_close(out, (1 - following) * (x - sigma * v) + following * noise, rtol=0, atol=0)
    assert not make_scheduler().config.stochastic_sampling


def test_timesteps_on_the_device_asked_for_and_at_least_one_step():
    scheduler = make_scheduler()
    assert set_official_timesteps(scheduler, 3, device="meta").device.type == "meta"  # no GPU needed to see it
    assert scheduler.sigmas.device.type == "meta"
    assert set_official_timesteps(scheduler, 1).tolist() == [1000.0]  # one step: from pure noise straight to 0
    with pytest.raises(ValueError, match="^steps must be at least 1, got 0$"):
        set_official_timesteps(scheduler, 0)


@pytest.mark.parametrize("text, audio, passes", [
    (5.0, 5.0, ("full", "text", "uncond")),
    (1.0, 5.0, ("full", "text")),
    (1.0, 1.0, ("full",)),
    (3.0, 1.0, ("full", "text", "uncond")),
])
def test_passes_needed(text, audio, passes):
    assert passes_needed(text, audio) == passes


def test_combination_formula_by_hand():
    f, t, u = torch.tensor([4.0]), torch.tensor([2.0]), torch.tensor([0.5])
    # v = u + cfg_text (t - u) + cfg_audio (f - t) = 0.5 + 5*1.5 + 4.5*2 = 17
    assert combine_guidance({"full": f, "text": t, "uncond": u}, 5.0, 4.5).item() == 17.0
    # cfg_text = 1: v = t + cfg_audio (f - t) = 2 + 4.5*2 = 11
    assert combine_guidance({"full": f, "text": t}, 1.0, 4.5).item() == 11.0
    assert combine_guidance({"full": f}, 1.0, 1.0).item() == 4.0


def test_the_release_schedule_does_not_follow_torchs_default_dtype():
    """The release's linspace is fp32 whatever the process's default dtype; a float64 one moves the timesteps
    by up to 1e-4 (measured), so the sigmas' dtype is spelled out."""
    expected = set_official_timesteps(make_scheduler(), 30).clone()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        timesteps = set_official_timesteps(make_scheduler(), 30)
    finally:
        torch.set_default_dtype(previous)
    assert torch.equal(timesteps, expected)
