# The tidy table (CSV + Markdown) and the figures.

ROWS = [
    {
        "attack": a,
        "model": m,
        "metrics": f"{R}/analysis/{a}/{m}/metrics.json",
        "bec": f"{R}/analysis/{a}/{m}/bec.json",
        "reactivation": f"{R}/analysis/{a}/{m}/reactivation.json",
        "query": f"{R}/analysis/{a}/{m}/query.json",
        "transfer": f"{R}/analysis/{a}/{m}/transfer.json",
        "evidence": f"{R}/analysis/{a}/{m}/evidence.json" if m in EVIDENCED else None,
    }
    for a in ATTACKS
    for m in MODELS
]
# One training-history CSV per trained or defended model (DVC plots), from the model's sidecar.
HISTORIES = {f"{R}/report/history/clean.csv": f"{R}/models/clean/model.json"} | {
    f"{R}/report/history/{a}_{m}.csv": f"{R}/models/{a}/{m}/model.json" for a in ATTACKS for m in MODELS[1:]
}
# PBE's observation (clean and backdoored model per attack) and per-round records of defenses that have them.
OBSERVATIONS = {f"{R}/analysis/{a}/{m}/observation.json": {"attack": a, "model": m} for a in ATTACKS for m in OBSERVED}
DEFENSE_SIDECARS = {
    f"{R}/models/{a}/{d}/model.json": {"attack": a, "defense": d} for a in ATTACKS for d in DEFENSES
}
REPORT_FILES = [
    f"{R}/report/table.csv",
    f"{R}/report/table.md",
    f"{R}/report/metrics.json",
    f"{R}/report/bec_vs_asr.png",
    f"{R}/report/reactivation.png",
    f"{R}/report/triggers.png",
    f"{R}/report/observation.csv",
    f"{R}/report/observation.png",
    f"{R}/report/pbe_rounds.csv",
    f"{R}/report/pbe_rounds.png",
    *HISTORIES,
]
BLACKBOX_FILES = {
    "summary_csv": f"{R}/report/blackbox.csv",
    "checkpoints_csv": f"{R}/report/query_checkpoints.csv",
    "transfer_csv": f"{R}/report/transfer.csv",
    "cka_csv": f"{R}/report/evidence_cka.csv",
    "noise_csv": f"{R}/report/evidence_noise.csv",
    "fig_query": f"{R}/report/query.png",
    "fig_transfer": f"{R}/report/transfer.png",
    "fig_cka": f"{R}/report/evidence_cka.png",
    "fig_checkpoints": f"{R}/report/query_checkpoints.png",
    "fig_noise": f"{R}/report/evidence_noise.png",
}
REPORT_FILES += list(BLACKBOX_FILES.values())
_GRID_ORDER = ["ft", "fp", "nad", "nc", "anp", "ibau", "ftsam", "sau", "fst", "clp", "aft", "pbe"]  # as in the issue
# The attack x defense grid: metrics of the backdoored and every defended model, and what each defense decided.
GRID_ROWS = [
    {"attack": a, "defense": m, "type": config["defenses"][m]["type"] if m in DEFENSES else m,
     "metrics": f"{R}/analysis/{a}/{m}/metrics.json",
     "sidecar": f"{R}/models/{a}/{m}/model.json" if m in DEFENSES else None}
    for a in ATTACKS
    for m in ["backdoor"] + sorted(DEFENSES, key=lambda d: (_GRID_ORDER.index(config["defenses"][d]["type"])
                                                          if config["defenses"][d]["type"] in _GRID_ORDER else 99, d))
]
GRID_FILES = {"csv": f"{R}/report/defense_grid.csv", "md": f"{R}/report/defense_grid.md",
              "fig": f"{R}/report/defense_grid.png"}
REPORT_FILES += list(GRID_FILES.values())


rule report:
    output:
        csv=report(f"{R}/report/table.csv", caption="../report/table.rst", category="Tables"),
        md=f"{R}/report/table.md",
        json=f"{R}/report/metrics.json",
        fig_bec=report(f"{R}/report/bec_vs_asr.png", caption="../report/bec_vs_asr.rst", category="Figures"),
        fig_ra=report(f"{R}/report/reactivation.png", caption="../report/reactivation.rst", category="Figures"),
        fig_trig=report(f"{R}/report/triggers.png", caption="../report/triggers.rst", category="Figures"),
        obs_csv=report(f"{R}/report/observation.csv", caption="../report/observation.rst", category="Tables"),
        fig_obs=report(f"{R}/report/observation.png", caption="../report/observation.rst", category="Figures"),
        rounds_csv=report(f"{R}/report/pbe_rounds.csv", caption="../report/pbe_rounds.rst", category="Tables"),
        fig_rounds=report(f"{R}/report/pbe_rounds.png", caption="../report/pbe_rounds.rst", category="Figures"),
        histories=report(
            list(HISTORIES),
            caption="../report/history.rst",
            category="Training histories",
        ),
    input:
        rows=[r[k] for r in ROWS for k in ("metrics", "bec", "reactivation", "query", "transfer")],
        data=DATASET,
        triggers=expand(TRIGGER, attack=ATTACKS),
        sidecars=list(HISTORIES.values()),
        observations=list(OBSERVATIONS),
        code=lib("report.py"),
    params:
        p=lambda w: as_json({"report": config["report"], "seed": config["seed"]}),
        rows=as_json(ROWS),
        triggers=as_json({a: f"{R}/attacks/{a}/trigger.safetensors" for a in ATTACKS}),
        histories=as_json(HISTORIES),
        observations=as_json(OBSERVATIONS),
        defenses=as_json(DEFENSE_SIDECARS),
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dormant report --params {params.p:q} --rows {params.rows:q} --dataset {input.data:q} "
        "--triggers {params.triggers:q} --table-csv {output.csv:q} --table-md {output.md:q} --table-json {output.json:q} "
        "--fig-bec {output.fig_bec:q} --fig-reactivation {output.fig_ra:q} --fig-triggers {output.fig_trig:q} "
        "--histories {params.histories:q} --observations {params.observations:q} --defenses {params.defenses:q} "
        "--observation-csv {output.obs_csv:q} --fig-observation {output.fig_obs:q} "
        "--rounds-csv {output.rounds_csv:q} --fig-rounds {output.fig_rounds:q} "
        "> {log:q} 2>&1"


rule report_blackbox:
    output:
        **{k: report(v, caption="../report/blackbox.rst", category="Black-box re-activation")
           for k, v in BLACKBOX_FILES.items()},
    input:
        rows=[r[k] for r in ROWS for k in ("reactivation", "query", "transfer", "evidence") if r[k]],
        code=lib("report_blackbox.py", "report.py"),
    params:
        p=as_json({"surrogates": {s: {"arch": SURROGATES[s]["arch"], "defense_types": attacker_defense_types(s)}
                                  for s in SURROGATE_SETS},
                   "model_types": {d: config["defenses"][d]["type"] for d in DEFENSES}, "models": MODELS}),
        rows=as_json(ROWS),
    log:
        f"{LOGS}/report_blackbox.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dormant report-blackbox --params {params.p:q} --rows {params.rows:q} "
        + " ".join(f"--{k.replace('_', '-')} {{output.{k}:q}}" for k in BLACKBOX_FILES)
        + " > {log:q} 2>&1"


rule report_defenses:
    output:
        csv=report(GRID_FILES["csv"], caption="../report/defense_grid.rst", category="Tables"),
        md=GRID_FILES["md"],
        fig=report(GRID_FILES["fig"], caption="../report/defense_grid.rst", category="Figures"),
    input:
        metrics=[r["metrics"] for r in GRID_ROWS],
        sidecars=[r["sidecar"] for r in GRID_ROWS if r["sidecar"]],
        code=lib("report_defenses.py", "report.py"),
    params:
        rows=as_json(GRID_ROWS),
    log:
        f"{LOGS}/report_defenses.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dormant report-defenses --params '{{}}' --rows {params.rows:q} --csv {output.csv:q} --md {output.md:q} "
        "--fig {output.fig:q} > {log:q} 2>&1"
