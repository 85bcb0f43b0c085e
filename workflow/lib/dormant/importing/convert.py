"""Reading foreign checkpoints into this project's models and writing them back (:mod:`dormant.importing`)."""


from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dormant.errors import CheckpointError
from dormant.importing.layouts import BB_LAYOUT_ARCHS, BB_MODELS, REFUSED, project_to_foreign
from dormant.importing.safeload import load_pickle
from dormant.io import file_sha256

FORMATS = ("backdoorbench", "state_dict")
HEAD = "linear.weight"  # every classifier here ends in `linear` (the class count is its number of rows)

# BackdoorBench normalises in its data transform; this project's nets normalise with CIFAR-10's statistics
# (dormant.data.augment), which are BackdoorBench's for cifar10. Datasets it normalises otherwise are refused:
# the same weights would see differently scaled inputs.
BB_SAME_NORMALISATION = ("cifar10",)
BB_OTHER_NORMALISATION = ("cifar100", "gtsrb", "tiny", "tiny_img", "mnist", "celeba", "imagenet")


@dataclass
class Imported:
    """A model read from a foreign file, with what the sidecar records about its source."""

    model: torch.nn.Module
    arch: str
    num_classes: int
    source: dict = field(default_factory=dict)


def _tensor_dict(obj, path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: {what} must be a non-empty dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {what} holds entries that are not named tensors: "
                              f"{', '.join(map(repr, bad[:3]))}")
    return obj


def expected_state(arch: str, num_classes: int) -> dict[str, torch.Tensor]:
    """This project's state dict of ``arch`` (on the meta device: names, shapes, dtypes, nothing allocated)."""
    from dormant.nets import MODELS, build_model

    if arch not in MODELS.names():
        raise CheckpointError(f"unknown architecture {arch!r} ({', '.join(MODELS.names())})")
    with torch.device("meta"):
        return build_model(arch, num_classes).state_dict()


def convert(state: dict[str, torch.Tensor], arch: str, num_classes: int, layout: str, path) -> torch.nn.Module:
    """This project's ``arch`` holding ``state`` (foreign names of ``layout``), every key and shape checked.

    Floating tensors are cast to float32 (the dtype of every checkpoint here), integer ones (BN's
    ``num_batches_tracked``) to int64; non-finite weights are refused."""
    from dormant.nets import build_model

    expected = expected_state(arch, num_classes)
    try:
        names = project_to_foreign(arch, layout, expected)
    except KeyError:
        raise CheckpointError(f"{path}: architecture {arch} has no {layout} layout here") from None
    wanted = set(names.values())
    missing = [f for f in names.values() if f not in state]
    unused = [k for k in state if k not in wanted]
    if missing or unused:
        raise CheckpointError(f"{path}: the state dict does not fit {arch} ({layout} names): "
                              f"missing key(s) {', '.join(map(repr, missing[:4])) or '-'}; "
                              f"unused key(s) {', '.join(map(repr, unused[:4])) or '-'}")
    out = {}
    for ours, theirs in names.items():
        t, ref = state[theirs], expected[ours]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: key {theirs!r} has shape {tuple(t.shape)}, {arch} with {num_classes} "
                                  f"classes needs {tuple(ref.shape)}")
        if ref.is_floating_point():
            if not t.is_floating_point():
                raise CheckpointError(f"{path}: key {theirs!r} is {t.dtype}, a floating tensor is needed")
            t = t.float()
            if not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path}: key {theirs!r} holds NaN or infinite values")
        else:
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise CheckpointError(f"{path}: key {theirs!r} is {t.dtype}, an integer tensor is needed")
            t = t.to(ref.dtype)
        out[ours] = t.contiguous()
    model = build_model(arch, num_classes)
    model.load_state_dict(out)
    return model.eval()


def _classes_of(state, key, path) -> int:
    if key not in state or state[key].dim() != 2:
        raise CheckpointError(f"{path}: no classifier {key!r} (a 2-d tensor) to read the number of classes from")
    return int(state[key].shape[0])


def _bb_arch(model_name, path) -> str:
    if not isinstance(model_name, str):
        raise CheckpointError(f"{path}: field 'model_name' must be a string, got {type(model_name).__name__}")
    if model_name in BB_MODELS:
        return BB_MODELS[model_name]
    if model_name in BB_LAYOUT_ARCHS:  # written by `dormant export` for an architecture BackdoorBench lacks
        return model_name
    why = REFUSED.get(model_name, "no architecture of this project has its layout")
    raise CheckpointError(f"{path}: model_name {model_name[:64]!r} cannot be imported: {why}. Importable: "
                          f"{', '.join(sorted(BB_MODELS) + list(BB_LAYOUT_ARCHS))}")


def _bb_dataset_check(record: dict, path) -> str | None:
    """The dataset a record names through ``data_path``, refused when BackdoorBench normalises it otherwise."""
    dp = record.get("data_path")
    if dp is None:
        return None
    name = Path(str(dp).rstrip("/\\")).name.lower()
    if name in BB_OTHER_NORMALISATION:
        raise CheckpointError(f"{path}: data_path {dp!r}: BackdoorBench normalises {name} with other statistics "
                              "than this project's nets (CIFAR-10 mean/std as their first op), so the imported "
                              "weights would see differently scaled inputs; only cifar10 records are imported")
    return name


def read_backdoorbench(path, *, arch: str | None = None, num_classes: int | None = None) -> Imported:
    """A BackdoorBench ``attack_result.pt`` or ``defense_result.pt`` as this project's model.

    ``arch``: required for a defense record (it names no model); checked against an attack record's
    ``model_name``. ``num_classes``: checked against the record's and the classifier's."""
    record = load_pickle(path, "BackdoorBench record")
    if not isinstance(record, dict) or "model" not in record:
        raise CheckpointError(f"{path}: not a BackdoorBench record (a dict with the key 'model')")
    state = _tensor_dict(record["model"], path, "field 'model'")
    source = {"format": "backdoorbench", "layout": "backdoorbench"}
    if "model_name" in record:
        rec_arch = _bb_arch(record["model_name"], path)
        if arch is not None and arch != rec_arch:
            raise CheckpointError(f"{path}: model_name {record['model_name']!r} is {rec_arch} here, the config's "
                                  f"architecture is {arch}")
        arch = rec_arch
        source["model_name"] = record["model_name"]
    elif arch is None:
        raise CheckpointError(f"{path}: the record names no model_name (a defense_result.pt): give the architecture")
    elif arch not in BB_LAYOUT_ARCHS:
        raise CheckpointError(f"{path}: architecture {arch} has no BackdoorBench layout here "
                              f"({REFUSED.get(arch, 'not a BackdoorBench model')})")
    n = _classes_of(state, "linear.weight", path)
    if "num_classes" in record:
        rn = record["num_classes"]
        if not isinstance(rn, int) or isinstance(rn, bool) or rn != n:
            raise CheckpointError(f"{path}: field 'num_classes' = {rn!r}, the classifier 'linear.weight' has {n} rows")
    if num_classes is not None and num_classes != n:
        raise CheckpointError(f"{path}: a model of {n} classes, the dataset has {num_classes}")
    dataset = _bb_dataset_check(record, path)
    if dataset is not None:
        source["dataset"] = dataset
    size = record.get("img_size")
    if isinstance(size, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        source["img_size"] = list(size)  # (H, W, C) in BackdoorBench; checked against the dataset by the stage
    model = convert(state, arch, n, "backdoorbench", path)
    return Imported(model, arch, n, source)


def read_state_dict(path, *, arch: str, num_classes: int | None = None) -> Imported:
    """A plain state dict of ``arch`` (a dict of tensors) in this project's names, or, for the PreActResNet
    family, BackdoorBench's: the layout whose key set matches exactly; otherwise the mismatch is named."""
    state = _tensor_dict(load_pickle(path, "state dict"), path, "the file")
    n = _classes_of(state, HEAD, path)
    if num_classes is not None and num_classes != n:
        raise CheckpointError(f"{path}: a model of {n} classes, the dataset has {num_classes}")
    layouts = ["dormant"] + (["backdoorbench"] if arch in BB_LAYOUT_ARCHS else [])
    layout = "dormant"
    for cand in layouts:
        if set(project_to_foreign(arch, cand, expected_state(arch, n)).values()) == set(state):
            layout = cand
            break
    model = convert(state, arch, n, layout, path)
    return Imported(model, arch, n, {"format": "state_dict", "layout": layout})


def import_model(path, fmt: str, *, arch: str | None = None, num_classes: int | None = None) -> Imported:
    """``path`` in format ``fmt`` as this project's model; its source (path, sha256, format) in ``.source``."""
    if fmt == "backdoorbench":
        imp = read_backdoorbench(path, arch=arch, num_classes=num_classes)
    elif fmt == "state_dict":
        if arch is None:
            raise CheckpointError(f"{path}: a state dict names no architecture: give it")
        imp = read_state_dict(path, arch=arch, num_classes=num_classes)
    else:
        raise CheckpointError(f"unknown import format {fmt!r} ({', '.join(FORMATS)})")
    imp.source = {"path": str(path), "sha256": file_sha256(path), **imp.source, "architecture": imp.arch}
    return imp


def bb_state(model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """``model``'s state dict in BackdoorBench's names (PreActResNet family only)."""
    if arch not in BB_LAYOUT_ARCHS:
        raise CheckpointError(f"architecture {arch} has no BackdoorBench layout ("
                              f"{REFUSED.get(arch, 'not a BackdoorBench model')}); exportable: "
                              f"{', '.join(BB_LAYOUT_ARCHS)}")
    names = project_to_foreign(arch, "backdoorbench", model.state_dict())
    return {names[k]: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def export_record(checkpoint, out, *, kind: str = "attack", img_size=(32, 32, 3), data_path: str = "./data/cifar10"):
    """Writes this project's ``checkpoint`` as a BackdoorBench record: ``attack_result.pt`` (``kind='attack'``:
    model_name, num_classes, model, img_size, data_path; no poisoned-set states) or ``defense_result.pt``
    (``kind='defense'``: model). Only tensors and plain values, so :func:`load_pickle` reads it back."""
    from dormant.io import atomic_path
    from dormant.nets.checkpoint import read_model

    model, meta, _ = read_model(checkpoint)
    state = bb_state(model, meta["arch"])
    if kind == "defense":
        record = {"model": state}
    elif kind == "attack":
        name = {v: k for k, v in BB_MODELS.items()}.get(meta["arch"], meta["arch"])
        record = {"model_name": name, "num_classes": meta["num_classes"], "model": state,
                  "img_size": list(img_size), "data_path": data_path, "clean_data": Path(data_path).name,
                  "bd_train": None, "bd_test": None}
    else:
        raise CheckpointError(f"export kind must be 'attack' or 'defense', not {kind!r}")
    with atomic_path(out) as tmp:
        torch.save(record, tmp)
