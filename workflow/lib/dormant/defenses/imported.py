"""A defense applied elsewhere: the defended model of each attack is read from a file (docs/operations.md,
"Models trained elsewhere"), e.g. BackdoorBench's ``defense/<name>/defense_result.pt``.

Nothing runs here: the ``import_defense`` stage reads ``models[<attack>]`` in ``format`` with
:mod:`dormant.importing`, and the ``defend`` stage never sees this type (the workflow routes it away).
"""

from __future__ import annotations

from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.errors import ConfigError


@DEFENSES.register("imported")
class Imported(Defense):
    data_access = "elsewhere"
    defaults = {"format": "backdoorbench", "models": {}}

    def run(self, model, data, *, seed, checkpoint=None, monitor=None, audit=None):
        raise ConfigError("defense type 'imported' is read by the import_defense stage, it does not run")
