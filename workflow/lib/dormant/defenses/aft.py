"""AFT: adversarial fine-tuning on the defender's clean subset (Mu et al., CVPR 2023, the variant with
clean extra data; docs/methods.md section 8).

One pass of fine-tuning on untargeted PGD adversarial examples of the clean subset with their true labels:
SGD lr 1e-3, momentum 0.9, weight decay 5e-4, batch 128, 10 epochs, constant learning rate, PGD L-inf 6/255,
step 1.2/255, 7 steps with the model in eval mode. All settings come from params.yaml.
"""

from __future__ import annotations

from dormant import training
from dormant.analysis.adversarial import PGD_DEFAULTS, pgd_transform
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense

ADV_FT_DEFAULTS = {"epochs": 10, "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
                   "schedule": "constant", "augment": False, **PGD_DEFAULTS}


def first_batches(transform, n: int):
    """A ``batch_transform`` applying ``transform`` to the first ``n`` batches it sees and passing the later ones
    through unchanged (PBE's official schedule: only the first batches of a round are adversarial)."""
    seen = [0]

    def partial(model, x, y, generator):
        seen[0] += 1
        return transform(model, x, y, generator) if seen[0] <= n else x

    return partial


def adversarial_finetune(model, data, cfg: dict, *, seed: int, checkpoint=None, desc: str = "aft",
                         optimizer=None, adversarial_batches: int | None = None) -> list[dict]:
    """Fine-tunes ``model`` in place on PGD examples of ``data`` (labels as given); returns the history.
    ``adversarial_batches``: only that many batches of the call, counted from its first, are replaced by PGD
    examples and the rest train on the (augmented) batch itself; None = every batch, 0 = none.
    ``optimizer``: continue with an existing optimiser instead of a fresh one."""
    cfg = {**ADV_FT_DEFAULTS, **cfg}
    train_cfg = {k: v for k, v in cfg.items() if k in training.DEFAULTS or k in PGD_DEFAULTS}
    transform = None
    if adversarial_batches is None:
        transform = pgd_transform(cfg)
    elif adversarial_batches > 0:
        transform = first_batches(pgd_transform(cfg), adversarial_batches)
    return training.train(model, data, train_cfg, seed=seed, checkpoint=checkpoint, batch_transform=transform,
                          optimizer=optimizer, desc=desc)


@DEFENSES.register("aft")
class AdversarialFineTuning(Defense):
    defaults = training.defaults(without=("label_smoothing",), **ADV_FT_DEFAULTS)

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = {k: v for k, v in self.cfg.items() if k != "type"}
        history = adversarial_finetune(model, clean, cfg, seed=seed, checkpoint=checkpoint, desc="aft")
        return model, {"history": history, "changed": True}
