"""Image corruptions on preprocessed pixel values, shared by BDHS_noise, POVID-style pairs and VCD's contrasting
copy (docs/bdhs.md): the closed-form forward diffusion with the POVID / VCD noise schedule.

    >>> noisy = diffusion_noise(inputs["pixel_values"][0], steps=500, seed=7)
"""

from __future__ import annotations

import torch

# beta_k = sigmoid(linspace(-6, 6, 1000)) scaled to [1e-5, 5e-3]
NOISE_BETAS = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
_ALPHA_BAR = torch.cumprod(1 - NOISE_BETAS, dim=0)


def diffusion_noise(pixels: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """x(N) = sqrt(abar_N) x + sqrt(1 - abar_N) eps, eps ~ N(0, 1) (Eq. 9, closed form), on the preprocessed pixel
    tensor; abar is indexed 0-based like the public code (cumprod[noise_step]); steps=0 returns `pixels`."""
    if not 0 <= steps < len(NOISE_BETAS):
        raise ValueError(f"noise steps must be in [0, {len(NOISE_BETAS) - 1}], got {steps}")
    if steps == 0:
        return pixels
    abar = _ALPHA_BAR[steps]
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(pixels.shape, generator=gen).to(pixels.device, pixels.dtype)
    return abar.sqrt() * pixels + (1 - abar).sqrt() * eps
