"""PBE: Progressive Backdoor Erasing (Mu et al., CVPR 2023, arXiv 2202.06312, section 4; docs/methods.md
section 8). Purification without clean data: it gets the poisoned training set only.

    z0[i] = logits of the original (backdoored) model for every training image
    S     = a random ``init_fraction`` of the training set
    for round r = 1..R:
        adversarially fine-tune on S (PGD examples of S with their dataset labels; see aft.py)
        s[i] = cos(z0[i], f(x_i)) for every training image
        S    = the top ``keep_fractions[r-1]`` of images by s (high = judged clean), for r < R

``adversarial_schedule`` says which batches are adversarial:
* ``official`` (default; the authors' code): round 1 is adversarial in every batch of every epoch; in rounds
  2..R only the first ``adversarial_batches`` (31) batches of the round's first epoch are, and the rest of the
  round trains on the clean batches. One SGD optimiser (with its momentum buffers) serves all rounds.
  With ``augment: true`` each batch is augmented before PGD, as in the authors' code.
* ``every_batch``: every batch of every round is adversarial, with a fresh optimiser per round (about 10x more
  PGD at the preset's sizes).

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
from dormant.progress import Heartbeat
from dormant.runtime import exact

PBE_DEFAULTS = {**ADV_FT_DEFAULTS, "rounds": 4, "init_fraction": 0.05, "keep_fractions": [0.2, 0.5, 0.7],
                "adversarial_schedule": "official", "adversarial_batches": 31}
SCHEDULES = ("official", "every_batch")


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


def _stream_seed(seed: int, name: str) -> int:
    """A seed for a named random stream of its own, derived from the run's seed."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def init_generator(seed: int) -> torch.Generator:
    """The generator of the initial random subset: a stream of its own. Seeding it with the run's seed
    directly would replay the attack's poison selection (also ``randperm(N)`` from ``seed``), so the first
    subset would be exactly the poisoned images."""
    return torch.Generator().manual_seed(_stream_seed(seed, "pbe:initial-subset"))


def _round_checkpoint(checkpoint, r: int, part: str = ""):
    if checkpoint is None:
        return None
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.round{r}{'.' + part if part else ''}{p.suffix}")


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
        if c["adversarial_schedule"] not in SCHEDULES:
            raise ConfigError(f"defenses.pbe.adversarial_schedule: {c['adversarial_schedule']!r} is not one of "
                              f"{', '.join(SCHEDULES)}")
        if c["adversarial_schedule"] == "official" and c["schedule"] != "constant":
            raise ConfigError("defenses.pbe.schedule: the official adversarial_schedule splits each round's first "
                              f"epoch from the rest and needs a constant learning rate, not {c['schedule']!r}")
        if isinstance(c["adversarial_batches"], bool) or not isinstance(c["adversarial_batches"], int) \
                or c["adversarial_batches"] < 0:
            raise ConfigError(f"defenses.pbe.adversarial_batches: {c['adversarial_batches']!r} is not a count >= 0")
        self.c = c

    def _finetune(self, model, subset, ft_cfg, *, r, seed, checkpoint, optimizer) -> list[dict]:
        """One round's fine-tuning under the adversarial schedule; returns its per-epoch history."""
        c = self.c
        if c["adversarial_schedule"] == "every_batch" or r == 1:
            return adversarial_finetune(model, subset, ft_cfg, seed=seed + r, optimizer=optimizer,
                                        checkpoint=_round_checkpoint(checkpoint, r), desc=f"pbe round {r}")
        # official rounds 2..R: the first epoch with its first batches adversarial, then clean epochs
        hist = adversarial_finetune(model, subset, {**ft_cfg, "epochs": 1}, seed=seed + r, optimizer=optimizer,
                                    adversarial_batches=c["adversarial_batches"],
                                    checkpoint=_round_checkpoint(checkpoint, r), desc=f"pbe round {r}")
        if ft_cfg["epochs"] > 1:
            rest = adversarial_finetune(model, subset, {**ft_cfg, "epochs": ft_cfg["epochs"] - 1},
                                        seed=_stream_seed(seed, f"pbe:round{r}:clean-epochs"), optimizer=optimizer,
                                        adversarial_batches=0, checkpoint=_round_checkpoint(checkpoint, r, "clean"),
                                        desc=f"pbe round {r} (clean)")
            hist += [{**h, "epoch": h["epoch"] + 1} for h in rest]
        return hist

    def run(self, model, data, *, seed, checkpoint=None, monitor=None, audit=None):
        c, n = self.c, len(data)
        z0 = logits_of(model, data.x)
        k0 = max(1, int(round(c["init_fraction"] * n)))
        selected = torch.randperm(n, generator=init_generator(seed))[:k0].sort().values
        history, rounds = [], []
        ft_cfg = {k: v for k, v in c.items() if k in ADV_FT_DEFAULTS}
        # the official schedule keeps one optimiser (and its momentum) across rounds; every_batch starts afresh
        optimizer = training.make_optimizer(model, ft_cfg) if c["adversarial_schedule"] == "official" else None
        hb = Heartbeat("pbe", total=c["rounds"], unit="round")  # each round's fine-tuning writes its own lines
        for r in range(1, c["rounds"] + 1):
            rec = {"round": r, "selected": len(selected), "fraction": len(selected) / n}
            if audit is not None:
                rec.update(audit(selected))
            hist = self._finetune(model, data.subset(selected.to(data.x.device)), ft_cfg, r=r, seed=seed,
                                  checkpoint=checkpoint, optimizer=optimizer)
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
            hb.update(1, **{k: v for k, v in rec.items() if k != "round"})
            if r < c["rounds"]:
                selected = select_top(scores, c["keep_fractions"][r - 1])
        hb.close()
        return model, {"history": history, "rounds": rounds, "changed": True,
                       "adversarial_schedule": c["adversarial_schedule"]}
