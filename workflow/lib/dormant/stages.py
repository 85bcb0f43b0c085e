"""Pipeline stages: each reads its input artifacts, calls the library, writes its outputs atomically.

The Snakemake rules call these through :mod:`dormant.cli`, passing their own params.yaml sections.
Every output gets a sidecar (config, seed, code version, metrics).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from . import bec as bec_mod
from . import training
from .attacks import build_attack, create_attack, load_attack, make_resources, save_attack
from .checkpoints import load_model, save_model
from .data import load_dataset, load_source, save_dataset
from .defenses import build_defense
from .errors import DataError
from .io import read_json, save_tensors, sidecar, write_json
from .metrics import defense_effectiveness_rate, evaluate
from .models import build_model
from .reactivation import run_reactivation

log = logging.getLogger("dormant.stages")


def _json_sidecar(path) -> str:
    return str(Path(path).with_suffix(".json"))


def prepare_data(params: dict, *, dataset: str) -> None:
    """Source (demo archive, folder, torchvision, synthetic) -> one safetensors file of uint8 tensors."""
    sets = load_source(params["data"])
    meta = {"source": params["data"]["source"], "n_train": len(sets["train"]), "n_test": len(sets["test"]),
            "image_shape": list(sets["train"].image_shape)}
    save_dataset(sets, dataset, meta)
    write_json(_json_sidecar(dataset), sidecar(params, params.get("seed"), meta, classes=sets["train"].classes))
    log.info("dataset: %d train, %d test images of shape %s", meta["n_train"], meta["n_test"], meta["image_shape"])


def clean_subset(params: dict, *, dataset: str, subset: str) -> None:
    """The defender's clean data: round(clean_ratio * N) training indices, stratified by class, from ``seed``.

    One index per run, shared by every defense, so defended models are comparable.
    """
    sets = load_dataset(dataset)
    y = sets["train"].y
    ratio = params["defense_data"]["clean_ratio"]
    g = torch.Generator().manual_seed(params["seed"])
    picks = []
    for c in range(sets["train"].num_classes):
        idx = torch.nonzero(y == c).flatten()
        k = int(round(ratio * len(idx)))
        picks.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    idx = torch.cat(picks).sort().values
    write_json(subset, {**sidecar(params, params["seed"], {"n": len(idx)}), "indices": idx.tolist()})


def attack_resource(params: dict, *, dataset: str, resource: str, clean: str | None = None, device="cpu") -> None:
    """The heavy trigger resource of one attack (section 4): LF's pattern and TrojanNN's trigger against the
    clean model ``clean``, SSBA's encoder/decoder and Input-Aware's mask network trained on the dataset."""
    sets = load_dataset(dataset, device)
    cfg = params["attack"]
    model = load_model(clean, device) if clean else None
    tensors, info = make_resources(cfg, sets["train"], sets["train"].num_classes, params["seed"], clean_model=model,
                                   device=device)
    save_tensors(tensors, resource, {"config": cfg, "name": params["name"]})
    write_json(_json_sidecar(resource), sidecar(params, params["seed"], info))
    log.info("resource of %s: %s", params["name"], {k: v for k, v in info.items() if not isinstance(v, list)})


def make_trigger(params: dict, *, dataset: str, trigger: str, resource: str | None = None) -> None:
    """Trigger resources and poison index of one attack (section 4), saved so later stages rebuild it exactly."""
    from .io import load_tensors

    sets = load_dataset(dataset)
    cfg = params["attack"]
    resources = None
    if build_attack(cfg, sets["train"].image_shape, sets["train"].num_classes).resource_stage:
        if not resource:
            raise DataError(f"attacks.{params['name']}: type {cfg['type']!r} needs its resource file (--resource)")
        resources, meta = load_tensors(resource)
        if meta.get("config") != cfg:
            raise DataError(f"{resource} was made for another config of attacks.{params['name']}; rerun its stage")
    atk = create_attack(cfg, sets["train"].x, sets["train"].y, sets["train"].num_classes, params["seed"], resources)
    n_p = len(atk.poison_index)
    already_target = int((sets["train"].y[atk.poison_index] == atk.target).sum())
    info = {"n_poison": n_p, "poison_ratio": n_p / len(sets["train"]), "poison_already_target": already_target}
    save_attack(atk, trigger, {"name": params["name"]})
    write_json(_json_sidecar(trigger), sidecar(params, params["seed"], info))


def train_model(params: dict, *, dataset: str, model: str, trigger: str | None = None,
                trained_trigger: str | None = None, checkpoint: str | None = None, device="cpu") -> None:
    """Clean (no trigger) or backdoored (with trigger) training; resumable through ``checkpoint``.

    With ``trained_trigger`` the attack as it stands after training is saved there: an attack that learns
    jointly with the victim (Input-Aware) learns here, and that file is every later stage's trigger.
    Without it the attack is frozen (e.g. the attacker's surrogates, trained with the final trigger)."""
    sets = load_dataset(dataset, device)
    train_set, test_set = sets["train"], sets["test"]
    torch.manual_seed(params["seed"])
    net = build_model(params["model"]["arch"], train_set.num_classes).to(device)
    atk = load_attack(trigger, device) if trigger else None
    mask = atk.poison_mask(len(train_set), device) if atk is not None else None
    history = training.train(net, train_set, params["train"], seed=params["seed"], attack=atk, poison_mask=mask,
                             checkpoint=checkpoint, eval_fn=lambda m: evaluate(m, test_set, atk),
                             learn_attack=trained_trigger is not None, desc="backdoor" if atk else "clean")
    metrics = evaluate(net, test_set, atk)
    if trained_trigger:
        if atk is None:
            raise DataError("--trained-trigger needs --trigger")
        save_attack(atk, trained_trigger, {"trained_with": model, "learned": atk.learns_in_training})
        write_json(_json_sidecar(trained_trigger), sidecar(
            params, params["seed"], {**metrics, "learned_in_training": atk.learns_in_training,
                                     "n_poison": len(atk.poison_index)}, trained_with=model))
    save_model(net, model, arch=params["model"]["arch"], num_classes=train_set.num_classes, config=params,
               seed=params["seed"], metrics=metrics, history=history)
    log.info("final metrics %s", metrics)


def defend(params: dict, *, dataset: str, subset: str, trigger: str, backdoored: str, model: str,
           checkpoint: str | None = None, device="cpu") -> None:
    """Applies one defense to the backdoored model with only the data its ``data_access`` names: the clean
    subset, or (PBE) the poisoned training set. Test data and the poison index reach it only through
    history-only observers (``monitor``: test C-ACC/ASR/RA; ``audit``: share of truly clean images)."""
    sets = load_dataset(dataset, device)
    atk = load_attack(trigger, device)
    defense = build_defense(params["defense"])
    net = load_model(backdoored, device)
    audit = None
    if defense.data_access == "poisoned_train":
        data = atk.poisoned_trainset(sets["train"])
        is_poison = atk.poison_mask(len(data), device=data.x.device)

        def audit(selected):
            bad = int(is_poison[selected.to(is_poison.device)].sum())
            return {"precision": 100.0 * (len(selected) - bad) / max(1, len(selected)), "poisoned_selected": bad}

        n_data = len(data)
    else:
        idx = torch.tensor(read_json(subset)["indices"], dtype=torch.long)
        data = sets["train"].subset(idx)
        n_data = len(idx)
    test = sets["test"]
    net, info = defense.run(net, data, seed=params["seed"], checkpoint=checkpoint,
                            monitor=lambda m: evaluate(m, test, atk), audit=audit)
    src = read_json(_json_sidecar(backdoored))["model"]
    save_model(net, model, arch=src["arch"], num_classes=src["num_classes"], config=params, seed=params["seed"],
               n_clean=n_data if defense.data_access == "clean_subset" else 0, data_access=defense.data_access,
               n_data=n_data, **info)


def measure(params: dict, *, dataset: str, trigger: str, model: str, backdoored: str, metrics: str,
            device="cpu") -> None:
    """C-ACC, ASR, RA of a model under an attack's trigger, and DER relative to the backdoored model."""
    test = load_dataset(dataset, device)["test"]
    atk = load_attack(trigger, device)
    m = evaluate(load_model(model, device), test, atk)
    if Path(model).resolve() == Path(backdoored).resolve():
        ref = m
    else:
        ref = evaluate(load_model(backdoored, device), test, atk)
    if params["role"] == "clean":  # DER compares a model derived from f_A with f_A; the clean model is not
        m["der"] = math.nan
    else:
        m["der"] = defense_effectiveness_rate(ref["c_acc"], ref["asr"], m["c_acc"], m["asr"])
    m["backdoored_c_acc"], m["backdoored_asr"] = ref["c_acc"], ref["asr"]
    write_json(metrics, sidecar(params, params["seed"], m))


def observe(params: dict, *, dataset: str, trigger: str, model: str, observation: str, device="cpu") -> None:
    """PBE's observation for one model: where its untargeted adversarial examples land, and how close their
    features are to triggered images (methods.md section 8)."""
    from .observation import observe as run_observation

    cfg = params["observation"]
    res = run_observation(load_model(model, device), load_dataset(dataset, device)["test"],
                          load_attack(trigger, device), n_images=cfg["n_images"], eps=cfg["eps"],
                          step=cfg["step"], steps=cfg["steps"], seed=params["seed"], batch_size=cfg["batch_size"])
    write_json(observation, sidecar(params, params["seed"], res))


def existence(params: dict, *, dataset: str, trigger: str, model: str, backdoored: str, clean: str, bec: str,
              device="cpu") -> None:
    """BEC of one model (section 6), layer-wise CKA included."""
    test = load_dataset(dataset, device)["test"]
    atk = load_attack(trigger, device)
    cfg = params["bec"]
    res = bec_mod.compute_bec(load_model(backdoored, device), load_model(clean, device),
                              {"model": load_model(model, device)}, test, atk, n_images=cfg["n_images"],
                              fractions=tuple(cfg["fractions"]), seed=params["seed"], device=device)
    per_q = res["models"]["model"]
    head = per_q[str(cfg["headline_fraction"])]
    summary = {"bec": head["bec"], "S": head["S"], "S_clean": head["S_clean"],
               **{f"bec_{int(round(100 * float(q)))}": v["bec"] for q, v in per_q.items()}}
    write_json(bec, {**sidecar(params, params["seed"], summary), "detail": per_q, "layers": res["layers"],
                     "tac": res["tac"], "n_images": res["n_images"]})


def reactivate(params: dict, *, dataset: str, trigger: str, model: str, result: str, delta: str, device="cpu") -> None:
    """White-box re-activation and gUAA against one model (section 7)."""
    sets = load_dataset(dataset, device)
    atk = load_attack(trigger, device)
    res, deltas = run_reactivation(load_model(model, device), sets["train"], sets["test"], atk,
                                   params["reactivation"], params["seed"])
    save_tensors(deltas, delta, {"budget": res["budget"]})
    write_json(result, sidecar(params, params["seed"], {k: v for k, v in res.items() if not k.startswith("loss")},
                               curves={"loss_reactivated": res["loss_reactivated"], "loss_guaa": res["loss_guaa"]}))


def report(params: dict, *, rows: list[dict], dataset: str, triggers: dict, table_csv: str, table_md: str,
           table_json: str, fig_bec: str, fig_reactivation: str, fig_triggers: str,
           histories: dict | None = None, observations: dict | None = None, observation_csv: str | None = None,
           fig_observation: str | None = None, defenses: dict | None = None, rounds_csv: str | None = None,
           fig_rounds: str | None = None) -> None:
    """Tidy table, the paper-style figures, per-model training histories (``histories``: CSV path -> model
    sidecar), PBE's observation (``observations``: JSON path -> attack/model) and per-round records of
    progressive defenses (``defenses``: model sidecar -> attack/defense)."""
    from . import report as rep

    df = rep.build_table(rows, params)
    rep.write_table(df, table_csv, table_md, table_json)
    if observations is not None and observation_csv:
        obs = rep.observation_table(observations)
        rep.write_csv(obs[rep.OBSERVATION_COLUMNS], observation_csv)
        if fig_observation:
            rep.figure_observation(obs, fig_observation)
    if defenses is not None and rounds_csv:
        rounds = rep.rounds_table(defenses)
        rep.write_csv(rounds, rounds_csv)
        if fig_rounds:
            rep.figure_rounds(rounds, fig_rounds)
    for csv_path, model_json in (histories or {}).items():
        rep.write_history(model_json, csv_path)
    rep.figure_bec_vs_asr(df, fig_bec)
    rep.figure_reactivation(df, fig_reactivation)
    sets = load_dataset(dataset)
    rep.figure_trigger_gallery(sets["test"], {k: load_attack(v) for k, v in triggers.items()}, fig_triggers,
                               n=params["report"]["gallery_images"], seed=params["seed"])
