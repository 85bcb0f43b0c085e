"""Runs one stage function in a fresh interpreter and prints, as JSON, every ``dormant`` module it loaded.

Usage: ``python trace_stage.py STAGE_MODULE STAGE KWARGS_JSON``; ``KWARGS_JSON`` holds the command line's
arguments by name (``params`` and JSON arguments as strings). The stage is called directly, not through the
CLI, which imports every stage module to list them."""

import importlib
import json
import sys


def main() -> None:
    module, name, raw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    importlib.import_module(f"dormant.stages.{module}")
    from dormant.stages import STAGES

    stage = STAGES[name]
    params = json.loads(raw.pop("params"))
    kwargs = {k: json.loads(v) if stage.is_json_arg(k) else v for k, v in raw.items()}
    stage.func(params, **kwargs)
    # dormant.configguard is imported by the environment's startup hook (a .pth line) in every interpreter and
    # acts only inside Snakemake's config loader: it is not something the stage loads.
    loaded = sorted(m for m in sys.modules
                    if (m == "dormant" or m.startswith("dormant.")) and m != "dormant.configguard")
    print("LOADED " + json.dumps(loaded))


if __name__ == "__main__":
    main()
