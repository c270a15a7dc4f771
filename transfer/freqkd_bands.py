"""Frequency-decoupled distillation losses (Frequency-Decoupled Cross-Modal KD, section 4), on pooled
feature vectors of any width D.

A feature vector is split by a real FFT over the feature axis: the DC bin is dropped (that is the mean
subtraction of the paper's standardisation), the lowest ``low_fraction`` of the remaining bins form the
low band, the rest the high band; each band goes back to the feature domain by an inverse FFT *with the
signal length D* (without it an odd D comes back one short). Bin counts follow from D, nothing is
hard-coded to one feature size.

    L_low  = mean (Std(s_low)  - Std(t_low))^2
    L_high = mean (sigma(Std(s_high)) - sigma(Std(t_high)))^2,   sigma(x) = sign(x) log(1 + |x|)

with Std(x) = (x - mean) / ||x - mean||_2 per vector. (The strategy that uses them: ``crossback.transfer.freqkd``.)
"""
from __future__ import annotations

import torch
from torch import Tensor


def band_bins(dim: int, low_fraction: float) -> tuple[int, int]:
    """(number of low bins, number of high bins) of a D-wide feature, DC excluded."""
    if dim < 4:  # rfft of width D has D // 2 bins besides DC: two bands need two of them
        raise ValueError(f"a feature of width {dim} has no two frequency bands (width 4 at least)")
    if not 0.0 < low_fraction < 1.0:
        raise ValueError(f"low_fraction must lie in (0, 1), got {low_fraction}")
    bins = dim // 2  # rfft gives dim // 2 + 1 bins, the first of them DC
    low = min(max(1, round(low_fraction * bins)), bins - 1)
    return low, bins - low


def split_bands(x: Tensor, low_fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """(low band, high band) of features ``x`` (..., D), each in the feature domain, DC removed:
    ``low + high == x - x.mean(-1)``."""
    dim = x.shape[-1]
    low, _ = band_bins(dim, low_fraction)
    spectrum = torch.fft.rfft(x, dim=-1)
    keep_low = torch.zeros(spectrum.shape[-1], dtype=torch.bool, device=x.device)
    keep_low[1 : 1 + low] = True
    keep_high = torch.ones_like(keep_low)
    keep_high[: 1 + low] = False
    zero = torch.zeros((), dtype=spectrum.dtype, device=x.device)
    to_features = lambda keep: torch.fft.irfft(torch.where(keep, spectrum, zero), n=dim, dim=-1)  # noqa: E731
    return to_features(keep_low), to_features(keep_high)


def standardise(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit L2 norm per vector (the last axis)."""
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(eps)


def sign_log(x: Tensor) -> Tensor:
    """sign(x) log(1 + |x|): gentler than the identity on large differences (the paper's Eq. 6)."""
    return torch.sign(x) * torch.log1p(x.abs())


def band_losses(student: Tensor, teacher: Tensor, low_fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """(L_low, L_high) between student and teacher features (N, D) of the same items."""
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} differ")
    return decoupled_losses(split_bands(student, low_fraction), split_bands(teacher, low_fraction))


def decoupled_losses(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(L_low, L_high) from already split (low, high) bands of student and teacher."""
    (s_low, s_high), (t_low, t_high) = student, teacher
    low = (standardise(s_low) - standardise(t_low)).pow(2).mean()
    high = (sign_log(standardise(s_high)) - sign_log(standardise(t_high))).pow(2).mean()
    return low, high
