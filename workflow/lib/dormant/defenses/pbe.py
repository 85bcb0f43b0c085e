"""PBE: Progressive Backdoor Erasing (Mu et al., CVPR 2023, arXiv 2202.06312, section 4; docs/methods.md
section 8). Purification without clean data: it gets the poisoned training set only.

    z0[i] = logits of the original (backdoored) model for every training image
    S     = a random ``init_fraction`` of the training set
    for round r = 1..R:
        adversarially fine-tune on S (PGD examples of S with their dataset labels; see aft.py)
        s[i] = cos(z0[i], f(x_i)) for every training image
        S    = the top ``keep_fractions[r-1]`` of images by s (high = judged clean), for r < R

Why it works: adversarial examples of a backdoored model tend towards the target label, so adversarial
fine-tuning unlearns the trigger's shortcut; poisoned images then change their logits most (low cosine),
and the growing subset keeps mostly clean images. The selection uses only logits; the poison index is
seen only by the stage's ``audit`` observer, for the precision column of the history.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from dormant import training
from dormant.data.augment import to_float
from dormant.defenses import DEFENSES
from dormant.defenses.aft import ADV_FT_DEFAULTS, adversarial_finetune
from dormant.defenses.base import Defense
from dormant.errors import ConfigError
from dormant.runtime import exact

PBE_DEFAULTS = {**ADV_FT_DEFAULTS, "rounds": 4, "init_fraction": 0.05, "keep_fractions": [0.2, 0.5, 0.7]}


@torch.no_grad()
def logits_of(model, x_uint8: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x_uint8), batch_size):
        with exact(x_uint8.device):  # fp32: near-tied cosine scores decide the subsets
            out.append(model(to_float(x_uint8[i : i + batch_size])).float())
    model.train(was_training)
    return torch.cat(out)


def select_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices (sorted) of the ``round(fraction * N)`` highest scores; ties go to the lower index."""
    k = max(1, int(round(fraction * len(scores))))
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    return order[:k].sort().values


def init_generator(seed: int) -> torch.Generator:
    """The generator of the initial random subset: a stream of its own. Seeding it with the run's seed
    directly would replay the attack's poison selection (also ``randperm(N)`` from ``seed``), so the first
    subset would be exactly the poisoned images."""
    digest = hashlib.sha256(f"{seed}:pbe:initial-subset".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _round_checkpoint(checkpoint, r: int):
    if checkpoint is None:
        return None
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.round{r}{p.suffix}")


@DEFENSES.register("pbe")
class ProgressiveBackdoorErasing(Defense):
    data_access = "poisoned_train"
    defaults = training.defaults(without=("label_smoothing",), **PBE_DEFAULTS)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        c = dict(self.cfg)
        fr = list(c["keep_fractions"])
        if len(fr) != c["rounds"] - 1:
            raise ConfigError(f"defenses.pbe.keep_fractions: {fr} needs rounds - 1 = {c['rounds'] - 1} entries "
                              "(the subset for rounds 2..R)")
        if any(b <= a for a, b in zip([c["init_fraction"], *fr], fr)):
            raise ConfigError(f"defenses.pbe.keep_fractions: {fr} must grow from init_fraction "
                              f"{c['init_fraction']}")
        self.c = c

    def run(self, model, data, *, seed, checkpoint=None, monitor=None, audit=None):
        c, n = self.c, len(data)
        z0 = logits_of(model, data.x)
        k0 = max(1, int(round(c["init_fraction"] * n)))
        selected = torch.randperm(n, generator=init_generator(seed))[:k0].sort().values
        history, rounds = [], []
        ft_cfg = {k: v for k, v in c.items() if k in ADV_FT_DEFAULTS}
        for r in range(1, c["rounds"] + 1):
            rec = {"round": r, "selected": len(selected), "fraction": len(selected) / n}
            if audit is not None:
                rec.update(audit(selected))
            hist = adversarial_finetune(model, data.subset(selected.to(data.x.device)), ft_cfg, seed=seed + r,
                                        checkpoint=_round_checkpoint(checkpoint, r), desc=f"pbe round {r}")
            scores = F.cosine_similarity(z0, logits_of(model, data.x), dim=1)
            if monitor is not None:
                rec.update(monitor(model))
            rec.update(loss=hist[-1]["loss"], train_acc=hist[-1]["train_acc"],
                       score_mean=float(scores.mean()))
            rounds.append(rec)
            offset = len(history)
            for h in hist:
                history.append({**h, "epoch": offset + h["epoch"], "round": r})
            history[-1].update({k: v for k, v in rec.items() if k not in ("loss", "train_acc")})
            if r < c["rounds"]:
                selected = select_top(scores, c["keep_fractions"][r - 1])
        return model, {"history": history, "rounds": rounds, "changed": True}
