"""The ``dormant`` command: one subcommand per pipeline stage (``dormant STAGE --params ... --<path> PATH``).

The Snakemake rules call it with their own params.yaml sections as JSON; it is as usable by hand:
``dormant --help`` lists the stages, ``dormant STAGE --help`` documents every argument and the params
sections the stage reads. ``--params`` takes a JSON object or the path of a JSON/YAML file (params.yaml
itself works: a stage reads only its sections). Errors in the input (bad JSON, a missing section, a missing
or damaged file) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from dormant.errors import DormantError
from dormant.stages import ARG_HELP, STAGES, Stage, load_all

EXIT_INPUT = 2


class InputError(DormantError):
    """Bad command-line input (exit code 2)."""


def _parser_for(stage: Stage, sub) -> None:
    sections = ", ".join(stage.sections) or "(none)"
    sp = sub.add_parser(
        stage.command, help=stage.summary,
        description=f"{stage.func.__doc__.strip()}\n\nparams sections: {sections}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--params", required=True, metavar="JSON|FILE",
                    help=f"a JSON object, or a JSON/YAML file, with the sections: {sections}")
    for name, par in stage.path_args().items():
        required = par.default is par.empty
        role = "output" if name in stage.outputs else ("JSON" if stage.is_json_arg(name) else "input")
        what = ARG_HELP.get(name, name.replace("_", " "))
        sp.add_argument(f"--{name.replace('_', '-')}", dest=name, required=required,
                        metavar="JSON" if stage.is_json_arg(name) else "PATH",
                        help=f"[{role}{'' if required else ', optional'}] {what}")
    sp.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: $DORMANT_DEVICE, else cuda if "
                                                   "available, else cpu)")
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sp.set_defaults(stage=stage.name)


def build_parser() -> argparse.ArgumentParser:
    stages = load_all()
    p = argparse.ArgumentParser(prog="dormant", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", dest="global_device", default=None, help="as the stage's --device (either place)")
    p.add_argument("--threads", dest="global_threads", type=int, default=None, help="as the stage's --threads")
    sub = p.add_subparsers(title="stages (one per Snakemake rule)", metavar="STAGE", required=True)
    for stage in stages.values():
        _parser_for(stage, sub)
    sub.add_parser("plan", help="not a stage: jobs per rule and projected GPU-hours of a config "
                                "(dormant plan --help; docs/operations.md)", add_help=False)
    sub.add_parser("import", help="not a stage: a model trained elsewhere (BackdoorBench record, state dict) -> "
                                  "a checkpoint of this project (dormant import --help)", add_help=False)
    sub.add_parser("export", help="not a stage: a checkpoint -> a BackdoorBench-layout record "
                                  "(dormant export --help)", add_help=False)
    return p


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate key(s) {', '.join(map(repr, dup))}")
    return dict(pairs)


def read_params(value: str, stage: Stage) -> dict:
    """``--params`` as a JSON object or a JSON/YAML file; every section the stage reads must be present."""
    text, source = value, "--params"
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise InputError(f"--params: {value!r} is neither a JSON object nor an existing file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--params: cannot read {path}: {e}") from None
        source = str(path)
    try:
        if source != "--params" and Path(source).suffix in (".yaml", ".yml"):
            import yaml

            from dormant.config import StrictLoader

            params = yaml.load(text, Loader=StrictLoader)  # noqa: S506 -- a SafeLoader refusing duplicate keys
        else:
            params = json.loads(text, object_pairs_hook=_unique_keys)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError, duplicate keys: each names the line or key
        raise InputError(f"{source}: not valid {'YAML' if source.endswith(('.yaml', '.yml')) else 'JSON'}: "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(params, dict):
        raise InputError(f"{source}: must be an object of params sections, not {type(params).__name__}")
    missing = [s for s in stage.sections if s not in params]
    if missing:
        raise InputError(f"{source}: stage {stage.name} needs the params section(s) {', '.join(missing)}")
    return params


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plan"]:  # the cost model: its own arguments, no stage machinery
        from dormant import plan

        try:
            return plan.main(argv[1:])
        except DormantError as e:  # a bad config file: one line, as for the stages
            print(f"error: {e}", file=sys.stderr)
            return EXIT_INPUT
    if argv[:1] in (["import"], ["export"]):  # model conversions: their own arguments
        from dormant.importing.cli import main as convert_main

        try:
            return convert_main(argv[0], argv[1:])
        except DormantError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_INPUT
    names = load_all()
    for i, a in enumerate(argv):  # the rule's name works as well as the command's
        if not a.startswith("-") and (i == 0 or argv[i - 1] not in ("--device", "--threads")):
            if a in names:
                argv[i] = names[a].command
            break
    args = build_parser().parse_args(argv)
    stage = STAGES[args.stage]
    try:
        params = read_params(args.params, stage)
        kwargs = {}
        for name in stage.path_args():
            value = getattr(args, name)
            if value is None:
                continue
            if stage.is_json_arg(name):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise InputError(f"--{name.replace('_', '-')}: not valid JSON: {e}") from None
            kwargs[name] = value
        from dormant import runtime

        device = runtime.setup(args.threads or args.global_threads, args.device or args.global_device)
        if "device" in inspect.signature(stage.func).parameters:
            kwargs["device"] = device
        stage.func(params, **kwargs)
    except DormantError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
