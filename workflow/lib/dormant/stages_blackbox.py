"""Pipeline stages of the black-box re-activation attacks and the evidence analyses (methods.md section 7).

Like :mod:`dormant.stages`: each reads its input artifacts, calls the library, writes its outputs
atomically with a sidecar. The transfer attack is split in two stages so that the workflow graph
itself shows that the optimising job never reads a target defended model.
"""

from __future__ import annotations

from .attacks import load_attack
from .checkpoints import load_model
from .data import load_dataset
from .io import load_tensors, save_tensors, sidecar, write_json


def query_attack(params: dict, *, dataset: str, trigger: str, model: str, result: str, delta: str,
                 device="cpu") -> None:
    """Query-based re-activation (QRA) and the query-based gUAA against one model, scores only (section 7)."""
    from .query import run_query_attack

    sets = load_dataset(dataset, device)
    res, deltas = run_query_attack(load_model(model, device), sets["train"], sets["test"], load_attack(trigger, device),
                                   params["query"], params["seed"])
    save_tensors(deltas, delta, {"budget": res["budget"]})
    curves = {name: res[name].pop("curve") for name in ("reactivated", "guaa")}
    write_json(result, sidecar(params, params["seed"], res, curves=curves))


def transfer_optimise(params: dict, *, dataset: str, trigger: str, surrogates: list, result: str, delta: str,
                      device="cpu") -> None:
    """The attacker's transfer delta (plain and momentum) from its own surrogate defended models only."""
    from .transfer import optimise_transfer

    sets = load_dataset(dataset, device)
    nets = [load_model(path, device) for path in surrogates]
    info, deltas = optimise_transfer(nets, sets["train"], load_attack(trigger, device), params["transfer"],
                                     params["seed"])
    losses = {v: info[v].pop("loss") for v in ("plain", "momentum")}
    save_tensors(deltas, delta, {"budget": info["budget"]})
    write_json(result, sidecar(params, params["seed"], {**info, "surrogates": surrogates}, curves=losses))


def transfer_evaluate(params: dict, *, dataset: str, trigger: str, model: str, deltas: dict, result: str,
                      device="cpu") -> None:
    """ASR of every surrogate set's transferred deltas on one (unseen) target model."""
    from .transfer import evaluate_transfer

    test = load_dataset(dataset, device)["test"]
    atk, net = load_attack(trigger, device), load_model(model, device)
    res = {name: evaluate_transfer(net, test, atk, load_tensors(path, device)[0])
           for name, path in sorted(deltas.items())}
    write_json(result, sidecar(params, params["seed"], res))


def evidence(params: dict, *, dataset: str, trigger: str, model: str, backdoored: str, delta: str, result: str,
             device="cpu") -> None:
    """Is the re-activated backdoor the original one? CKA and random-noise analyses for one model (section 7)."""
    from . import evidence as ev

    test = load_dataset(dataset, device)["test"]
    atk = load_attack(trigger, device)
    net, ref = load_model(model, device), load_model(backdoored, device)
    deltas = {k: v.to(device) for k, v in load_tensors(delta)[0].items()}
    cfg, seed = params["evidence"], params["seed"]
    res = {"cka": ev.feature_similarity(ref, net, test, atk, deltas, n_images=cfg["n_images"], seed=seed),
           "noise": ev.noise_robustness(ref, net, test, atk, deltas, levels=cfg["noise"], n_images=cfg["n_images"],
                                        seed=seed)}
    write_json(result, sidecar(params, seed, res))


def report_blackbox(params: dict, *, rows: list, summary_csv: str, checkpoints_csv: str, transfer_csv: str,
                    cka_csv: str, noise_csv: str, fig_query: str, fig_transfer: str, fig_cka: str,
                    fig_checkpoints: str, fig_noise: str) -> None:
    """Tables and figures of the black-box attacks and the evidence analyses (``rows``: per (attack, model)
    paths of its reactivation/query/transfer/evidence JSONs)."""
    from .report_blackbox import write_all

    write_all(rows, params["surrogates"], params["model_types"], params["models"],
              {"summary": summary_csv, "checkpoints": checkpoints_csv, "transfer": transfer_csv, "cka": cka_csv,
               "noise": noise_csv, "fig_query": fig_query, "fig_transfer": fig_transfer, "fig_cka": fig_cka,
               "fig_checkpoints": fig_checkpoints, "fig_noise": fig_noise})
