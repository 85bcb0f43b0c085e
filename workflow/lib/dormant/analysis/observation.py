"""The observation behind PBE (Mu et al., CVPR 2023, section 3; docs/methods.md section 8): untargeted
adversarial examples of a backdoored model mostly land on the target label and look like triggered images
to the network, while those of a clean model spread over the classes.

Per model: a (true label x adversarial label) matrix of PGD examples of non-target test images, the share
landing on the attack's target, and, in the penultimate feature space, how close each image's adversarial
example is to the same image with the trigger (cosine) compared with the clean image itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dormant.analysis.adversarial import pgd_untargeted
from dormant.analysis.metrics import poisoned_test_index
from dormant.data.augment import to_float
from dormant.nets.probe import penultimate_features


def label_matrix(true: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts: rows are true labels, columns predicted labels."""
    m = torch.zeros(num_classes, num_classes, dtype=torch.long)
    m.index_put_((true.cpu(), pred.cpu()), torch.ones(len(true), dtype=torch.long), accumulate=True)
    return m


def observe(model, test, attack, *, n_images: int, eps: float, step: float, steps: int, seed: int,
            batch_size: int = 250) -> dict:
    """The observation for one model under one attack's trigger (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    cand = poisoned_test_index(test.y, attack.target).cpu()
    idx = cand[torch.randperm(len(cand), generator=g)[:n_images]].sort().values.to(test.x.device)
    preds, adv_feats, clean_feats, trig_feats = [], [], [], []
    for i in range(0, len(idx), batch_size):
        b = idx[i : i + batch_size]
        x, y = to_float(test.x[b]), test.y[b]
        adv = pgd_untargeted(model, x, y, eps=eps, step=step, steps=steps, generator=g)
        trig = attack.apply(x).clamp(0, 1)
        fa, fc, ft = (penultimate_features(model, v) for v in (adv, x, trig))
        with torch.no_grad():
            preds.append(model.eval()(adv).argmax(1).cpu())
        adv_feats.append(fa), clean_feats.append(fc), trig_feats.append(ft)
    pred, y = torch.cat(preds), test.y[idx].cpu()
    fa, fc, ft = torch.cat(adv_feats), torch.cat(clean_feats), torch.cat(trig_feats)
    counts = label_matrix(y, pred, test.num_classes)
    rows = counts.sum(1, keepdim=True).clamp(min=1)
    return {
        "n_images": len(idx),
        "target": attack.target,
        "adv_success": 100.0 * float((pred != y).float().mean()),
        "adv_to_target": 100.0 * float((pred == attack.target).float().mean()),
        "cos_adv_trigger": float(F.cosine_similarity(fa, ft, dim=1).mean()),
        "cos_clean_trigger": float(F.cosine_similarity(fc, ft, dim=1).mean()),
        "matrix_counts": counts.tolist(),
        "matrix_percent": (100.0 * counts / rows).tolist(),
    }
