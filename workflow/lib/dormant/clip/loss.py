"""Contrastive objectives of the CLIP track (docs/methods.md section 9).

* ``clip_loss``: CLIP's symmetric image-text InfoNCE (Radford et al. 2021, section 2.3): with unit
  embeddings I, T of a batch of B pairs and scale tau, the mean of CE(tau I T^T, diag) and CE(tau T I^T, diag).
* ``inmodal_loss``: CleanCLIP's self-supervised term (Bansal et al. 2023, eq. 2), 1/2 [CE(tau I I'^T, diag)
  + CE(tau T T'^T, diag)] between each embedding and the embedding of its augmented view.
* ``cleanclip_loss`` = lambda_clip * clip_loss + lambda_ss * inmodal_loss (eq. 3; lambda 1 and 1 in the
  paper). Fine-tuning (FT) is the same with lambda_ss = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _diag_ce(logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), torch.arange(len(logits), device=logits.device))


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss of unit embeddings ``img``, ``txt`` [B, D] (row i of each is one pair)."""
    logits = scale * img @ txt.t()
    return 0.5 * (_diag_ce(logits) + _diag_ce(logits.t()))


def inmodal_loss(img: torch.Tensor, img_aug: torch.Tensor, txt: torch.Tensor, txt_aug: torch.Tensor,
                 scale: torch.Tensor) -> torch.Tensor:
    """CleanCLIP's in-modal term: each image against the augmented images, each caption against the
    augmented captions of the batch; the diagonal (its own view) is the positive."""
    return 0.5 * (_diag_ce(scale * img @ img_aug.t()) + _diag_ce(scale * txt @ txt_aug.t()))


def cleanclip_loss(img, txt, img_aug, txt_aug, scale, lambda_clip: float = 1.0, lambda_ss: float = 1.0):
    """lambda_clip * clip_loss + lambda_ss * inmodal_loss (the views are not needed when lambda_ss is 0)."""
    loss = lambda_clip * clip_loss(img, txt, scale)
    if lambda_ss:
        loss = loss + lambda_ss * inmodal_loss(img, img_aug, txt, txt_aug, scale)
    return loss
