"""Linear centred kernel alignment (Kornblith et al. 2019), as docs/methods.md section 6.3 writes it.

HSIC(K, L) = sum((H K H) * (H L H)) with H = I - 11^T / n and K = X X^T;
CKA = HSIC(K_A, K_m) / sqrt(HSIC(K_A, K_A) HSIC(K_m, K_m)).
Computed in float64; invariant to orthogonal transforms and isotropic scaling of the features.
"""

from __future__ import annotations

import torch


def gram(x: torch.Tensor) -> torch.Tensor:
    """Linear kernel of ``x`` flattened to (n, features), in float64."""
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def center(k: torch.Tensor) -> torch.Tensor:
    """H K H without forming H."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic(kc: torch.Tensor, lc: torch.Tensor) -> torch.Tensor:
    """HSIC of two already centred Gram matrices (the 1/(n-1)^2 factor cancels in CKA)."""
    return (kc * lc).sum()


def cka_from_grams(k: torch.Tensor, k2: torch.Tensor) -> float:
    kc, lc = center(k), center(k2)
    denom = torch.sqrt(hsic(kc, kc) * hsic(lc, lc))
    if denom <= 0:
        return 0.0
    return (hsic(kc, lc) / denom).item()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two feature matrices with the same number of rows."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples in both: {x.shape[0]} vs {y.shape[0]} rows")
    return cka_from_grams(gram(x), gram(y))
