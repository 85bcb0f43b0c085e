"""Stages of ``workflow/rules/models.smk``: the clean and backdoored models, and the defended models
(docs/methods.md sections 2, 4 and 5). Training and defenses resume from ``checkpoint`` when interrupted."""

from __future__ import annotations

import logging

from dormant.io import read_json, sidecar, write_json
from dormant.stages import sidecar_of, stage

log = logging.getLogger(__name__)


def fit(params: dict, *, dataset: str, model: str, trigger: str | None, trained_trigger: str | None,
        checkpoint: str | None, device) -> None:
    """Trains ``params['model']['arch']`` with ``params['train']``; with ``trigger`` under that attack, and with
    ``trained_trigger`` the attack as it stands after training is saved there (what it learned, if anything)."""
    import torch

    from dormant.analysis.metrics import evaluate
    from dormant.attacks import load_attack, save_attack
    from dormant.clip.specs import is_clip
    from dormant.data.imageset import load_dataset
    from dormant.nets import build_model
    from dormant.nets.checkpoint import save_model
    from dormant.training import train

    sets = load_dataset(dataset, device)
    train_set, test_set = sets["train"], sets["test"]
    atk = load_attack(trigger, device, n_train=len(train_set)) if trigger else None
    extra = {}
    if is_clip(params["model"]["arch"]):  # contrastive training on the image-caption pairs (section 9)
        from dormant.clip.fit import fit_clip

        net, history, extra = fit_clip(params, sets, atk, checkpoint=checkpoint, device=device)
    else:
        torch.manual_seed(params["seed"])
        net = build_model(params["model"]["arch"], train_set.num_classes).to(device)
        mask = atk.poison_mask(len(train_set), device) if atk is not None else None
        history = train(net, train_set, params["train"], seed=params["seed"], attack=atk, poison_mask=mask,
                        checkpoint=checkpoint, eval_fn=lambda m: evaluate(m, test_set, atk),
                        learn_attack=trained_trigger is not None, desc="backdoor" if atk else "clean")
    metrics = evaluate(net, test_set, atk)
    if trained_trigger:
        save_attack(atk, trained_trigger, {"trained_with": model, "learned": atk.learns_in_training})
        write_json(sidecar_of(trained_trigger), sidecar(
            params, params["seed"], {**metrics, "learned_in_training": atk.learns_in_training,
                                     "n_poison": len(atk.poison_index)}, trained_with=model))
    save_model(net, model, arch=params["model"]["arch"], num_classes=train_set.num_classes, config=params,
               seed=params["seed"], metrics=metrics, history=history, **extra)
    log.info("final metrics %s", metrics)


@stage(sections=("model", "train", "seed"), outputs=("model",))
def train_clean(params: dict, *, dataset: str, model: str, checkpoint: str | None = None, device="cpu") -> None:
    """Trains the clean reference model f_C (no trigger); resumable through ``checkpoint``."""
    fit(params, dataset=dataset, model=model, trigger=None, trained_trigger=None, checkpoint=checkpoint,
        device=device)


@stage(sections=("model", "train", "seed"), outputs=("model", "trained_trigger"))
def train_backdoor(params: dict, *, dataset: str, trigger: str, trained_trigger: str, model: str,
                   checkpoint: str | None = None, device="cpu") -> None:
    """Trains the backdoored model f_A under an attack; saves the attack as trained (every later stage's trigger).

    An attack that learns jointly with the victim (Input-Aware's generator) learns here."""
    fit(params, dataset=dataset, model=model, trigger=trigger, trained_trigger=trained_trigger,
        checkpoint=checkpoint, device=device)


def apply_defense(params: dict, *, dataset: str, subset: str, trigger: str, backdoored: str, model: str,
                  checkpoint: str | None, device) -> None:
    """Applies ``params['defense']`` to the backdoored model with only the data its ``data_access`` names: the
    clean subset, or (PBE) the poisoned training set. Test data and the poison index reach it only through
    history-only observers (``monitor``: test C-ACC/ASR/RA; ``audit``: share of truly clean images)."""
    import torch

    from dormant.analysis.metrics import evaluate
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.defenses import build_defense
    from dormant.errors import CheckpointError
    from dormant.nets.checkpoint import read_model, save_model

    # every input (sidecars included) is read and checked before the defense starts
    sets = load_dataset(dataset, device)
    n_train = len(sets["train"])
    atk = load_attack(trigger, device, n_train=n_train)
    net, weights_meta, _ = read_model(backdoored, device, require_sidecar=True)  # the weights/sidecar pair checked
    if weights_meta["num_classes"] != sets["train"].num_classes:
        raise CheckpointError(f"{backdoored}: a model of {weights_meta['num_classes']} classes, the dataset has "
                              f"{sets['train'].num_classes}")
    defense = build_defense(params["defense"])
    idx = subset_indices(subset, n_train) if defense.data_access == "clean_subset" else None
    audit = None
    if defense.data_access == "poisoned_train":
        data = atk.poisoned_trainset(sets["train"])
        is_poison = atk.poison_mask(len(data), device=data.x.device)

        def audit(selected):
            bad = int(is_poison[selected.to(is_poison.device)].sum())
            return {"precision": 100.0 * (len(selected) - bad) / max(1, len(selected)), "poisoned_selected": bad}

        n_data = len(data)
    else:
        data = sets["train"].subset(torch.tensor(idx, dtype=torch.long))
        n_data = len(idx)
    test = sets["test"]
    net, info = defense.run(net, data, seed=params["seed"], checkpoint=checkpoint,
                            monitor=lambda m: evaluate(m, test, atk), audit=audit)
    # architecture facts come from the weights file read above, not from a sidecar
    save_model(net, model, arch=weights_meta["arch"], num_classes=weights_meta["num_classes"], config=params,
               seed=params["seed"], n_clean=n_data if defense.data_access == "clean_subset" else 0,
               data_access=defense.data_access, n_data=n_data, **info)


def subset_indices(path, n_train: int) -> list[int]:
    """The clean subset's indices (``clean_subset`` stage), checked: distinct integers of the training set."""
    from dormant.errors import CheckpointError

    idx = read_json(path, keys=("indices",))["indices"]
    if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        raise CheckpointError(f"{path}: field 'indices' must be a list of integers")
    if not idx:
        raise CheckpointError(f"{path}: field 'indices' is empty")
    if min(idx) < 0 or max(idx) >= n_train:
        raise CheckpointError(f"{path}: field 'indices' holds {min(idx) if min(idx) < 0 else max(idx)}, outside the "
                              f"training set 0..{n_train - 1}")
    if len(set(idx)) != len(idx):
        raise CheckpointError(f"{path}: field 'indices' repeats indices")
    return idx


@stage(sections=("defense", "seed"), outputs=("model",))
def defend(params: dict, *, dataset: str, subset: str, trigger: str, backdoored: str, model: str,
           checkpoint: str | None = None, device="cpu") -> None:
    """Applies one defense to the backdoored model, with the defender's data only (section 5)."""
    apply_defense(params, dataset=dataset, subset=subset, trigger=trigger, backdoored=backdoored, model=model,
                  checkpoint=checkpoint, device=device)


# ---- models trained elsewhere (docs/operations.md "Models trained elsewhere") ------------------------------------
def _import(params: dict, spec: dict, *, dataset: str, source: str, model: str, sets=None, **extra) -> dict:
    """Reads ``source`` (``spec['format']``) as ``params['model']['arch']`` with the dataset's class count and
    writes it as this project's checkpoint; its sidecar records the source (path, sha256, format, layout)."""
    from dormant.data.imageset import load_dataset
    from dormant.errors import CheckpointError
    from dormant.importing.convert import import_model
    from dormant.nets.checkpoint import save_model

    sets = sets or load_dataset(dataset, "cpu")  # the weights are only read and written: no device needed
    n = sets["train"].num_classes
    imp = import_model(source, spec["format"], arch=params["model"]["arch"], num_classes=n)
    size = imp.source.get("img_size")
    shape = tuple(sets["train"].x.shape[1:])  # (C, H, W)
    if size is not None and (len(size) != 3 or (size[2], size[0], size[1]) != shape):
        raise CheckpointError(f"{source}: field 'img_size' = {size} (H, W, C), the dataset's images are "
                              f"{shape[1]}x{shape[2]} with {shape[0]} channels")
    save_model(imp.model, model, arch=imp.arch, num_classes=imp.num_classes, config=params, seed=params["seed"],
               imported=imp.source, **extra)
    log.info("imported %s from %s", imp.arch, source)
    return imp.source


@stage(sections=("model", "seed"), outputs=("model",))
def import_clean(params: dict, *, dataset: str, source: str, model: str) -> None:
    """Reads the clean reference model f_C from ``model.import`` (a model trained elsewhere) instead of training it."""
    _import(params, params["model"]["import"], dataset=dataset, source=source, model=model)


@stage(sections=("model", "attack", "seed"), outputs=("model", "trained_trigger"))
def import_backdoor(params: dict, *, dataset: str, trigger: str, source: str, model: str,
                    trained_trigger: str) -> None:
    """Reads the backdoored model f_A from ``attacks.<name>.import``; the trigger is the config's (what the record
    was poisoned with), saved as every later stage's trigger."""
    from dormant.attacks import load_attack, save_attack
    from dormant.data.imageset import load_dataset

    sets = load_dataset(dataset, "cpu")
    atk = load_attack(trigger, "cpu", n_train=len(sets["train"]))
    _import(params, params["attack"]["import"], dataset=dataset, source=source, model=model, sets=sets)
    save_attack(atk, trained_trigger, {"trained_with": model, "learned": False})
    write_json(sidecar_of(trained_trigger), sidecar(params, params["seed"], {"learned_in_training": False,
                                                                            "n_poison": len(atk.poison_index)},
                                                    trained_with=model, imported=True))


@stage(sections=("model", "defense", "attack", "seed"), outputs=("model",))
def import_defense(params: dict, *, dataset: str, backdoored: str, source: str, model: str) -> None:
    """Reads the defended model of one attack from an ``imported`` defense's ``models`` (a defense applied
    elsewhere, e.g. BackdoorBench's defense_result.pt)."""
    from dormant.errors import CheckpointError
    from dormant.nets.checkpoint import read_model

    _, meta, _ = read_model(backdoored, require_sidecar=True)  # the backdoored model it defends must fit
    if meta["arch"] != params["model"]["arch"]:
        raise CheckpointError(f"{backdoored}: architecture {meta['arch']}, model.arch is {params['model']['arch']}")
    spec = {"format": params["defense"].get("format", "backdoorbench")}
    _import(params, spec, dataset=dataset, source=source, model=model,
            changed=True, data_access="elsewhere", n_clean=0, n_data=0, history=[])
