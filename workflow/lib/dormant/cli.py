"""Command line of the pipeline stages: ``dormant STAGE --params JSON --<path-arg> PATH ...``
(also ``python -m dormant.cli``).

Snakemake rules call this with their own params.yaml sections as JSON; users can call it too.
Path arguments are the keyword arguments of the matching function in :mod:`dormant.stages`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from . import report_defenses, runtime, stages, stages_blackbox
from .errors import DormantError

STAGES = {
    "prepare-data": stages.prepare_data,
    "clean-subset": stages.clean_subset,
    "attack-resource": stages.attack_resource,
    "trigger": stages.make_trigger,
    "train": stages.train_model,
    "defend": stages.defend,
    "metrics": stages.measure,
    "bec": stages.existence,
    "observe": stages.observe,
    "reactivate": stages.reactivate,
    "query": stages_blackbox.query_attack,
    "transfer-optimise": stages_blackbox.transfer_optimise,
    "transfer-evaluate": stages_blackbox.transfer_evaluate,
    "evidence": stages_blackbox.evidence,
    "report-blackbox": stages_blackbox.report_blackbox,
    "report-defenses": report_defenses.report_defenses,
    "report": stages.report,
}
JSON_ARGS = {"rows", "triggers", "histories", "observations", "defenses", "surrogates", "deltas"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dormant", description=__doc__)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sub = p.add_subparsers(dest="stage", required=True)
    for name, fn in STAGES.items():
        sp = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0])
        sp.add_argument("--params", required=True, help="JSON object with this stage's params.yaml sections")
        for pname, par in inspect.signature(fn).parameters.items():
            if par.kind is not inspect.Parameter.KEYWORD_ONLY or pname == "device":
                continue
            required = par.default is inspect.Parameter.empty
            sp.add_argument(f"--{pname.replace('_', '-')}", dest=pname, required=required,
                            help="JSON" if pname in JSON_ARGS else "path")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    fn = STAGES[args.stage]
    kwargs = {k: v for k, v in vars(args).items() if k not in ("stage", "params", "threads") and v is not None}
    for k in JSON_ARGS & kwargs.keys():
        kwargs[k] = json.loads(kwargs[k])
    if "device" in inspect.signature(fn).parameters:
        kwargs["device"] = runtime.setup(args.threads)
    else:
        runtime.setup(args.threads)
    try:
        fn(json.loads(args.params), **kwargs)
    except DormantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
