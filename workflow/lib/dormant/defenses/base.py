"""The defense interface (docs/methods.md section 5).

A defense takes a (possibly backdoored) model and the defender's data and returns a model of the same
architecture. It never sees test data. ``data_access`` says which data the stage hands it:

* ``"clean_subset"`` (default): the clean subset named in params (5% of the training set by default, one
  saved index shared by every defense of a run);
* ``"poisoned_train"``: the whole poisoned training set as the attacker released it (uint8 images with the
  trigger, dirty labels), and no clean data (PBE).

The stage may also pass observers whose results only go into the history: ``monitor(model) -> dict``
(test-set C-ACC/ASR) and ``audit(selected_indices) -> dict`` (how many selected images are truly clean,
known to the pipeline from the poison index). A defense must never let them influence its decisions.
"""

from __future__ import annotations

import torch

from dormant.errors import ConfigError


class Defense:
    """Subclasses implement :meth:`run`. ``cfg`` is the defense's params.yaml entry."""

    data_access = "clean_subset"
    #: the models it defends: "classifier" (trained with labels) or "clip" (a CLIP adapter, with captions)
    models = "classifier"
    #: every key of the defense's params.yaml entry with its default: declared here once; the JSON schema
    #: allows exactly these keys (a test checks it) and a missing key takes this value
    defaults: dict = {}

    def __init__(self, cfg: dict):
        unknown = sorted(set(cfg) - set(self.defaults) - {"type"})
        if unknown:
            raise ConfigError(f"defense {cfg.get('type')!r}: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(self.defaults))}")
        self.type = cfg.get("type")
        self.cfg = {**self.defaults, **{k: v for k, v in cfg.items() if k != "type"}}

    def run(self, model: torch.nn.Module, data, *, seed: int, checkpoint=None, monitor=None,
            audit=None) -> tuple[torch.nn.Module, dict]:
        """Returns (defended model, info dict for the sidecar). ``data`` is what ``data_access`` names;
        ``checkpoint``: resumable state file; ``monitor``/``audit``: history-only observers (see above)."""
        raise NotImplementedError
