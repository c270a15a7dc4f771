"""The frequency band split and the decoupled distillation losses, for feature widths of any parity."""
import math

import pytest
import torch

from crossback.transfer.freqkd_bands import band_bins, band_losses, sign_log, split_bands, standardise


@pytest.mark.parametrize("dim", [7, 8, 33, 64])
def test_the_two_bands_add_up_to_the_centred_feature(dim):
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    low, high = split_bands(x)
    assert low.shape == high.shape == x.shape  # the inverse FFT is given the length: odd widths too
    assert torch.allclose(low + high, x - x.mean(dim=1, keepdim=True), atol=1e-12)
    assert torch.allclose(low.mean(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-12)  # DC removed


def test_a_slow_wave_lands_in_the_low_band_and_a_fast_one_in_the_high_band():
    dim = 32
    j = torch.arange(dim, dtype=torch.float64)
    slow, fast = torch.cos(2 * math.pi * 2 * j / dim), torch.cos(2 * math.pi * 13 * j / dim)
    low, high = split_bands((3.0 + slow + fast)[None])
    assert torch.allclose(low[0], slow, atol=1e-12) and torch.allclose(high[0], fast, atol=1e-12)


def test_band_sizes_follow_the_feature_width():
    assert band_bins(64, 0.5) == (16, 16) and band_bins(7, 0.5) == (2, 1) and band_bins(4, 0.9) == (1, 1)
    for dim in (4, 5, 9, 64, 768):
        low, high = band_bins(dim, 0.25)
        assert low >= 1 and high >= 1 and low + high == dim // 2
    with pytest.raises(ValueError, match="width 3"):
        band_bins(3, 0.5)
    with pytest.raises(ValueError, match="low_fraction"):
        band_bins(16, 1.0)


def test_standardise_and_sign_log():
    x = torch.randn(4, 10) * 7 + 3
    s = standardise(x)
    assert torch.allclose(s.mean(dim=1), torch.zeros(4), atol=1e-6) and torch.allclose(s.norm(dim=1), torch.ones(4))
    v = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0])
    assert torch.allclose(sign_log(v), torch.sign(v) * torch.log1p(v.abs())) and torch.equal(sign_log(-v), -sign_log(v))


def test_the_losses_vanish_for_identical_features_and_grow_with_disagreement():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(8, 24, generator=g)
    zero_low, zero_high = band_losses(teacher.clone(), teacher)
    assert float(zero_low) < 1e-12 and float(zero_high) < 1e-12
    near = teacher + 0.1 * torch.randn(8, 24, generator=g)
    far = torch.randn(8, 24, generator=g)
    assert all(float(a) < float(b) for a, b in zip(band_losses(near, teacher), band_losses(far, teacher)))
    student = far.clone().requires_grad_(True)
    low, high = band_losses(student, teacher)
    (low + high).backward()
    assert torch.isfinite(student.grad).all() and float(student.grad.norm()) > 0
    with pytest.raises(ValueError, match="differ"):
        band_losses(torch.zeros(2, 8), torch.zeros(2, 9))
