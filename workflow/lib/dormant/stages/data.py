"""Stages of ``workflow/rules/data.smk``: the dataset, the defender's clean subset, each attack's trigger
resource and its trigger + poison index (docs/methods.md sections 2 and 4)."""

from __future__ import annotations

import logging

from dormant.io import sidecar, write_json
from dormant.stages import sidecar_of, stage

log = logging.getLogger(__name__)


@stage(sections=("data", "seed"), outputs=("dataset",))
def prepare_data(params: dict, *, dataset: str) -> None:
    """Reads the dataset source (demo archive, folder, torchvision, synthetic) into one file of uint8 tensors."""
    from dormant.data.imageset import save_dataset
    from dormant.data.sources import fixed_label_space, load_source

    sets = load_source(params["data"])
    if params.get("clip") is not None:  # the CLIP track: the training split becomes image-caption pairs
        from dormant.clip.pairs import caption_training_split

        sets = caption_training_split(sets, params["data"], params["clip"], params["seed"])
    meta = {"source": params["data"]["source"], "n_train": len(sets["train"]), "n_test": len(sets["test"]),
            "image_shape": list(sets["train"].image_shape)}
    if fixed_label_space(params["data"]):
        meta["allow_empty_classes"] = True
    save_dataset(sets, dataset, meta)
    write_json(sidecar_of(dataset), sidecar(params, params.get("seed"), meta, classes=sets["train"].classes))
    log.info("dataset: %d train, %d test images of shape %s", meta["n_train"], meta["n_test"], meta["image_shape"])


@stage(sections=("defense_data", "seed"), outputs=("subset",))
def clean_subset(params: dict, *, dataset: str, subset: str) -> None:
    """Draws the defender's clean subset: round(clean_ratio * N) training indices, stratified by class.

    One index per run, shared by every defense, so defended models are comparable.
    """
    from dormant.data.imageset import load_dataset
    from dormant.data.subsets import stratified_subset

    train = load_dataset(dataset)["train"]
    idx = stratified_subset(train.y, train.num_classes, params["defense_data"]["clean_ratio"], params["seed"])
    write_json(subset, {**sidecar(params, params["seed"], {"n": len(idx)}), "indices": idx.tolist()})


@stage(sections=("attack", "name", "seed"), outputs=("resource",))
def attack_resource(params: dict, *, dataset: str, resource: str, clean: str | None = None, device="cpu") -> None:
    """Builds an attack's heavy trigger resource: LF's pattern or TrojanNN's trigger against the clean model,
    SSBA's encoder/decoder or Input-Aware's mask network trained on the dataset (section 4)."""
    from dormant.attacks import make_resources
    from dormant.data.imageset import load_dataset
    from dormant.io import save_tensors
    from dormant.nets.checkpoint import load_model

    sets = load_dataset(dataset, device)
    cfg = params["attack"]
    model = load_model(clean, device) if clean else None
    tensors, info = make_resources(cfg, sets["train"], sets["train"].num_classes, params["seed"], clean_model=model,
                                   device=device)
    save_tensors(tensors, resource, {"config": cfg, "name": params["name"]})
    write_json(sidecar_of(resource), sidecar(params, params["seed"], info))
    log.info("resource of %s: %s", params["name"], {k: v for k, v in info.items() if not isinstance(v, list)})


@stage(sections=("attack", "name", "seed"), outputs=("trigger",))
def trigger(params: dict, *, dataset: str, trigger: str, resource: str | None = None) -> None:
    """Makes an attack's trigger and poison index, saved so that later stages rebuild it exactly (section 4)."""
    from dormant.attacks import build_attack, create_attack, load_resources, save_attack
    from dormant.data.imageset import load_dataset
    from dormant.errors import DataError

    sets = load_dataset(dataset)
    cfg = params["attack"]
    resources = None
    if build_attack(cfg, sets["train"].image_shape, sets["train"].num_classes).resource_stage:
        if not resource:
            raise DataError(f"attacks.{params['name']}: type {cfg['type']!r} needs its resource file (--resource)")
        resources = load_resources(resource, cfg)
    atk = create_attack(cfg, sets["train"].x, sets["train"].y, sets["train"].num_classes, params["seed"], resources)
    if params.get("clip") is not None:  # exactly N pairs whose caption is not of the target class
        import torch

        from dormant.clip.poison import select_pairs

        select_pairs(atk, sets["train"].y, params["clip"].get("poison_count"),
                     torch.Generator().manual_seed(params["seed"]))
    n_p = len(atk.poison_index)
    already_target = int((sets["train"].y[atk.poison_index] == atk.target).sum())
    info = {"n_poison": n_p, "poison_ratio": n_p / len(sets["train"]), "poison_already_target": already_target}
    save_attack(atk, trigger, {"name": params["name"]})
    write_json(sidecar_of(trigger), sidecar(params, params["seed"], info))
