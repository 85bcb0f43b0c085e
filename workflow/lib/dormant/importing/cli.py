"""``dormant import`` and ``dormant export``: by-hand conversions between foreign records and this project's
checkpoints (not stages; the pipeline's import_* rules call the stages of ``stages/models.py``)."""

from __future__ import annotations

import argparse

from dormant.importing.convert import FORMATS


def import_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dormant import", description=(
        "A model trained elsewhere -> this project's checkpoint (.safetensors + .json sidecar recording the "
        "source file's sha256, format and architecture). Pickles are read with torch.load(weights_only=True) "
        "only; a file that needs code to load is refused."))
    p.add_argument("source", help="the foreign file (attack_result.pt, defense_result.pt or a state dict)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--model", required=True, metavar="PATH", help="[output] the checkpoint (.safetensors)")
    p.add_argument("--arch", default=None, help="this project's architecture (required unless the record names it)")
    p.add_argument("--num-classes", type=int, default=None, help="checked against the classifier, if given")
    return p


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dormant export", description=(
        "This project's checkpoint -> a BackdoorBench-layout record (attack_result.pt or defense_result.pt); "
        "PreActResNet architectures only."))
    p.add_argument("model", help="the checkpoint (.safetensors)")
    p.add_argument("--out", required=True, metavar="PATH", help="[output] the record (.pt)")
    p.add_argument("--kind", choices=("attack", "defense"), default="attack")
    p.add_argument("--img-size", type=int, nargs=3, default=(32, 32, 3), metavar=("H", "W", "C"),
                   help="the record's img_size (attack records; default 32 32 3)")
    return p


def main(command: str, argv: list[str]) -> int:
    from dormant.importing.convert import export_record, import_model
    from dormant.nets.checkpoint import save_model

    if command == "import":
        a = import_parser().parse_args(argv)
        imp = import_model(a.source, a.format, arch=a.arch, num_classes=a.num_classes)
        save_model(imp.model, a.model, arch=imp.arch, num_classes=imp.num_classes, config={}, seed=None,
                   imported=imp.source)
        print(f"{a.model}: {imp.arch}, {imp.num_classes} classes, from {a.source} ({imp.source['layout']} names)")
    else:
        a = export_parser().parse_args(argv)
        export_record(a.model, a.out, kind=a.kind, img_size=tuple(a.img_size))
        print(f"{a.out}: BackdoorBench {a.kind} record of {a.model}")
    return 0
