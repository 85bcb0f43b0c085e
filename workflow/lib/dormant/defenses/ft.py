"""FT: fine-tuning on the defender's clean subset (docs/methods.md section 5; BackdoorBench 'ft').

SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule, standard crop+flip augmentation;
epochs and learning rate come from params.yaml.
"""

from __future__ import annotations

from dormant import training
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense


@DEFENSES.register("ft")
class FineTuning(Defense):
    defaults = training.defaults()

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        history = training.train(model, clean, self.cfg, seed=seed, checkpoint=checkpoint, desc="ft")
        return model, {"history": history, "changed": True}
