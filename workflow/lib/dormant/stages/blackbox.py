"""Stages of ``workflow/rules/blackbox.smk``: query-based re-activation, the attacker's own surrogates and
the transfer attack, and the evidence that re-activation restores the original backdoor (docs/methods.md
section 7).

The transfer attack is split in two stages so that the workflow graph itself shows that the optimising job
never reads a target defended model: the attacker draws its own clean subset (``attacker_subset``), trains and
defends its own surrogates (``train_surrogate``, ``defend_surrogate``), optimises a delta on them
(``transfer_optimise``), and only then is that delta evaluated on the victim's models (``transfer_evaluate``).
"""

from __future__ import annotations

from dormant.io import sidecar, write_json
from dormant.stages import stage


@stage(sections=("query", "seed"), outputs=("result", "delta"))
def query(params: dict, *, dataset: str, trigger: str, model: str, result: str, delta: str, device="cpu") -> None:
    """Runs query-based re-activation and the query-based gUAA against one model, on output scores only."""
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.io import save_tensors
    from dormant.nets.checkpoint import load_model
    from dormant.reactivation.query import run_query_attack

    sets = load_dataset(dataset, device)
    res, deltas = run_query_attack(load_model(model, device), sets["train"], sets["test"], load_attack(trigger, device),
                                   params["query"], params["seed"])
    save_tensors(deltas, delta, {"budget": res["budget"]})
    curves = {name: res[name].pop("curve") for name in ("reactivated", "guaa")}
    write_json(result, sidecar(params, params["seed"], res, curves=curves))


@stage(sections=("defense_data", "seed"), outputs=("subset",))
def attacker_subset(params: dict, *, dataset: str, subset: str) -> None:
    """Draws the attacker's own clean subset (its own seed), for the defenses it applies to its surrogates."""
    from dormant.stages.data import clean_subset

    clean_subset(params, dataset=dataset, subset=subset)


@stage(sections=("model", "train", "seed"), outputs=("model",))
def train_surrogate(params: dict, *, dataset: str, trigger: str, model: str, checkpoint: str | None = None,
                    device="cpu") -> None:
    """Trains one of the attacker's backdoored models of another architecture, with the final (frozen) trigger."""
    from dormant.stages.models import fit

    fit(params, dataset=dataset, model=model, trigger=trigger, trained_trigger=None, checkpoint=checkpoint,
        device=device)


@stage(sections=("defense", "seed"), outputs=("model",))
def defend_surrogate(params: dict, *, dataset: str, subset: str, trigger: str, backdoored: str, model: str,
                     checkpoint: str | None = None, device="cpu") -> None:
    """Applies one of the attacker's own defenses (its settings, seed and clean subset) to its backdoored model."""
    from dormant.stages.models import apply_defense

    apply_defense(params, dataset=dataset, subset=subset, trigger=trigger, backdoored=backdoored, model=model,
                  checkpoint=checkpoint, device=device)


@stage(sections=("transfer", "surrogate", "seed"), outputs=("result", "delta"))
def transfer_optimise(params: dict, *, dataset: str, trigger: str, surrogates: list, result: str, delta: str,
                      device="cpu") -> None:
    """Optimises the attacker's transfer deltas (each of transfer.variants) on its own surrogate models only."""
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.io import save_tensors
    from dormant.nets.checkpoint import load_model
    from dormant.reactivation.transfer import optimise_transfer

    sets = load_dataset(dataset, device)
    nets = [load_model(path, device) for path in surrogates]
    info, deltas = optimise_transfer(nets, sets["train"], load_attack(trigger, device), params["transfer"],
                                     params["seed"])
    losses = {v: info[v].pop("loss") for v in info["variants"]}
    save_tensors(deltas, delta, {"budget": info["budget"]})
    write_json(result, sidecar(params, params["seed"], {**info, "surrogates": surrogates}, curves=losses))


@stage(sections=("seed",), outputs=("result",))
def transfer_evaluate(params: dict, *, dataset: str, trigger: str, model: str, deltas: dict, result: str,
                      device="cpu") -> None:
    """Measures every surrogate set's transferred deltas on one (unseen) target model."""
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.io import load_deltas
    from dormant.nets.checkpoint import load_model
    from dormant.reactivation.transfer import evaluate_transfer

    test = load_dataset(dataset, device)["test"]
    atk, net = load_attack(trigger, device), load_model(model, device)
    loaded = {name: load_deltas(path, test.image_shape, device) for name, path in sorted(deltas.items())}
    res = {name: evaluate_transfer(net, test, atk, d) for name, d in loaded.items()}
    write_json(result, sidecar(params, params["seed"], res))


@stage(sections=("evidence", "seed"), outputs=("result",))
def evidence(params: dict, *, dataset: str, trigger: str, model: str, backdoored: str, delta: str, result: str,
             device="cpu") -> None:
    """Tests whether re-activation restores the original backdoor: CKA and random-noise analyses of one model."""
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.io import load_deltas
    from dormant.nets.checkpoint import load_model
    from dormant.reactivation import evidence as ev
    from dormant.runtime import exact

    test = load_dataset(dataset, device)["test"]
    atk = load_attack(trigger, device)
    net, ref = load_model(model, device), load_model(backdoored, device)
    deltas = load_deltas(delta, test.image_shape, device, required=("delta_reactivated", "delta_guaa"))
    cfg, seed = params["evidence"], params["seed"]
    with exact(device):  # reported CKA and accuracies: fp32, TF32 off
        res = {"cka": ev.feature_similarity(ref, net, test, atk, deltas, n_images=cfg["n_images"], seed=seed),
               "noise": ev.noise_robustness(ref, net, test, atk, deltas, levels=cfg["noise"],
                                            n_images=cfg["n_images"], seed=seed)}
    write_json(result, sidecar(params, seed, res))
