"""Stages of ``workflow/rules/analysis.smk``, per (attack, model): metrics (C-ACC, ASR, RA, DER), BEC,
white-box re-activation with gUAA (at one budget and along reactivation.budgets), and PBE's observation
(docs/methods.md sections 3, 6, 7 and 8)."""

from __future__ import annotations

from dormant.io import sidecar, write_json
from dormant.stages import stage


@stage(sections=("role", "seed"), outputs=("metrics",))
def metrics(params: dict, *, dataset: str, trigger: str, model: str, backdoored: str, metrics: str,
            device="cpu") -> None:
    """Measures C-ACC, ASR and RA of a model under an attack's trigger, and DER against the backdoored model."""
    import math
    from pathlib import Path

    from dormant.analysis.metrics import defense_effectiveness_rate, evaluate
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.nets.checkpoint import load_model

    test = load_dataset(dataset, device)["test"]
    atk = load_attack(trigger, device)
    same = Path(model).resolve() == Path(backdoored).resolve()
    net = load_model(model, device)
    ref_net = None if same else load_model(backdoored, device)  # every input read before any work
    m = evaluate(net, test, atk)
    ref = m if same else evaluate(ref_net, test, atk)
    if params["role"] == "clean":  # DER compares a model derived from f_A with f_A; the clean model is not
        m["der"] = math.nan
    else:
        m["der"] = defense_effectiveness_rate(ref["c_acc"], ref["asr"], m["c_acc"], m["asr"])
    m["backdoored_c_acc"], m["backdoored_asr"] = ref["c_acc"], ref["asr"]
    write_json(metrics, sidecar(params, params["seed"], m))


@stage(sections=("bec", "seed"), outputs=("bec",))
def bec(params: dict, *, dataset: str, trigger: str, model: str, backdoored: str, clean: str, bec: str,
        device="cpu") -> None:
    """Computes the backdoor existence coefficient of one model, layer-wise CKA included (section 6)."""
    from dormant.analysis.bec import BEC_DEFAULTS, compute_bec
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.nets.checkpoint import load_model
    from dormant.runtime import exact

    test = load_dataset(dataset, device)["test"]
    atk = load_attack(trigger, device)
    cfg = params["bec"]
    with exact(device):  # activations, Gram matrices and CKA in fp32, TF32 off
        res = compute_bec(load_model(backdoored, device), load_model(clean, device),
                          {"model": load_model(model, device)}, test, atk, n_images=cfg["n_images"],
                          fractions=tuple(cfg["fractions"]), seed=params["seed"], device=device,
                          tac_images=cfg.get("tac_images", BEC_DEFAULTS["tac_images"]),
                          channel_rounding=cfg.get("channel_rounding", BEC_DEFAULTS["channel_rounding"]))
    per_q = res["models"]["model"]
    head = per_q[str(cfg["headline_fraction"])]
    summary = {"bec": head["bec"], "S": head["S"], "S_clean": head["S_clean"],
               **{f"bec_{int(round(100 * float(q)))}": v["bec"] for q, v in per_q.items()}}
    write_json(bec, {**sidecar(params, params["seed"], summary), "detail": per_q, "layers": res["layers"],
                     "tac": res["tac"], "n_images": res["n_images"], "tac_images": res["tac_images"],
                     "channel_rounding": res["channel_rounding"], "kept_channels": res["kept_channels"]})


@stage(sections=("reactivation", "seed"), outputs=("result", "delta"))
def reactivate(params: dict, *, dataset: str, trigger: str, model: str, result: str, delta: str, device="cpu") -> None:
    """Runs white-box re-activation and the gUAA baseline against one model (section 7)."""
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.io import save_tensors
    from dormant.nets.checkpoint import load_model
    from dormant.reactivation.whitebox import run_reactivation

    sets = load_dataset(dataset, device)
    atk = load_attack(trigger, device)
    res, deltas = run_reactivation(load_model(model, device), sets["train"], sets["test"], atk,
                                   params["reactivation"], params["seed"])
    save_tensors(deltas, delta, {"budget": res["budget"]})
    write_json(result, sidecar(params, params["seed"], {k: v for k, v in res.items() if not k.startswith("loss")},
                               curves={"loss_reactivated": res["loss_reactivated"], "loss_guaa": res["loss_guaa"]}))


@stage(sections=("reactivation", "seed"), outputs=("result",))
def budget(params: dict, *, dataset: str, trigger: str, model: str, result: str, device="cpu") -> None:
    """Re-activated and gUAA ASR of one model at every budget of reactivation.budgets (section 7.6).

    Writes a CSV (one row per norm and eps) and its JSON sidecar next to it."""
    import pandas as pd

    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.io import atomic_path
    from dormant.nets.checkpoint import load_model
    from dormant.reactivation.budget import COLUMNS, budget_curve
    from dormant.stages import sidecar_of

    sets = load_dataset(dataset, device)
    atk = load_attack(trigger, device)
    cfg = params["reactivation"]
    rows = budget_curve(load_model(model, device), sets["train"], sets["test"], atk, cfg, cfg.get("budgets"),
                        params["seed"])
    with atomic_path(result) as tmp:  # full precision: the report rounds
        pd.DataFrame.from_records(rows, columns=COLUMNS).to_csv(tmp, index=False)
    write_json(sidecar_of(result), sidecar(params, params["seed"], {"points": len(rows)}, rows=rows))


@stage(sections=("observation", "seed"), outputs=("observation",))
def observe(params: dict, *, dataset: str, trigger: str, model: str, observation: str, device="cpu") -> None:
    """PBE's observation for one model: where its untargeted adversarial examples land (section 8)."""
    from dormant.analysis.observation import observe as run_observation
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.nets.checkpoint import load_model

    cfg = params["observation"]
    res = run_observation(load_model(model, device), load_dataset(dataset, device)["test"],
                          load_attack(trigger, device), n_images=cfg["n_images"], eps=cfg["eps"],
                          step=cfg["step"], steps=cfg["steps"], seed=params["seed"], batch_size=cfg["batch_size"])
    write_json(observation, sidecar(params, params["seed"], res))
