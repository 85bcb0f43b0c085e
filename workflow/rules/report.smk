# The tidy table (CSV + Markdown) and the figures; for the paper each table also as LaTeX (.tex) and each figure
# as PDF, next to it (paper_files, common.smk).
# Stages: workflow/lib/dormant/stages/report.py (one function per rule, same name).

ROWS = [
    {
        "attack": a,
        "model": m,
        "metrics": analysis_file("metrics.json", a, m),
        "bec": analysis_file("bec.json", a, m),
        "reactivation": analysis_file("reactivation.json", a, m),
        "query": analysis_file("query.json", a, m),
        "transfer": analysis_file("transfer.json", a, m),
        "evidence": analysis_file("evidence.json", a, m) if m in EVIDENCED else None,
    }
    for a in ATTACKS
    for m in MODELS
]
# One training-history CSV per trained or defended model (DVC plots), from the model's sidecar.
HISTORIES = {report_file("history/clean.csv"): sidecar(CLEAN_MODEL)} | {
    report_file(f"history/{a}_{m}.csv"): sidecar(model_file(a, m)) for a in ATTACKS for m in MODELS[1:]
}
# PBE's observation (clean and backdoored model per attack) and per-round records of defenses that have them.
OBSERVATIONS = {analysis_file("observation.json", a, m): {"attack": a, "model": m} for a in ATTACKS for m in OBSERVED}
DEFENSE_SIDECARS = {sidecar(model_file(a, d)): {"attack": a, "defense": d} for a in ATTACKS for d in DEFENSES}
TABLE_FILES = {
    "csv": report_file("table.csv"),
    "md": report_file("table.md"),
    "json": report_file("metrics.json"),
    "fig_bec": report_file("bec_vs_asr.png"),
    "fig_ra": report_file("reactivation.png"),
    "fig_trig": report_file("triggers.png"),
    "obs_csv": report_file("observation.csv"),
    "fig_obs": report_file("observation.png"),
    "rounds_csv": report_file("pbe_rounds.csv"),
    "fig_rounds": report_file("pbe_rounds.png"),
}
REPORT_FILES = [*TABLE_FILES.values(), *HISTORIES, *paper_files(TABLE_FILES)]
BLACKBOX_FILES = {
    "summary_csv": report_file("blackbox.csv"),
    "checkpoints_csv": report_file("query_checkpoints.csv"),
    "transfer_csv": report_file("transfer.csv"),
    "cka_csv": report_file("evidence_cka.csv"),
    "noise_csv": report_file("evidence_noise.csv"),
    "fig_query": report_file("query.png"),
    "fig_transfer": report_file("transfer.png"),
    "fig_cka": report_file("evidence_cka.png"),
    "fig_checkpoints": report_file("query_checkpoints.png"),
    "fig_noise": report_file("evidence_noise.png"),
}
REPORT_FILES += [*BLACKBOX_FILES.values(), *paper_files(BLACKBOX_FILES)]
_GRID_ORDER = ["ft", "fp", "nad", "nc", "anp", "ibau", "ftsam", "sau", "fst", "clp", "aft", "pbe"]  # as in the issue
# The attack x defense grid: metrics of the backdoored and every defended model, and what each defense decided.
GRID_ROWS = [
    {"attack": a, "defense": m, "type": config["defenses"][m]["type"] if m in DEFENSES else m,
     "metrics": analysis_file("metrics.json", a, m),
     "sidecar": sidecar(model_file(a, m)) if m in DEFENSES else None}
    for a in ATTACKS
    for m in ["backdoor"] + sorted(DEFENSES, key=lambda d: (_GRID_ORDER.index(config["defenses"][d]["type"])
                                                          if config["defenses"][d]["type"] in _GRID_ORDER else 99, d))
]
GRID_FILES = {"csv": report_file("defense_grid.csv"), "md": report_file("defense_grid.md"),
              "fig": report_file("defense_grid.png")}
REPORT_FILES += [*GRID_FILES.values(), *paper_files(GRID_FILES)]
# The budget ablation (docs/methods.md section 7.6): one CSV per (attack, defense) of rule budget.
BUDGET_ROWS = [{"attack": a, "defense": d, "type": config["defenses"][d]["type"],
                "csv": analysis_file("budget.csv", a, d)} for a in ATTACKS for d in BUDGETED]
BUDGET_FILES = {"csv": report_file("budget.csv"), "md": report_file("budget.md"), "fig": report_file("budget.png")}
if BUDGET_ROWS:
    REPORT_FILES += [*BUDGET_FILES.values(), *paper_files(BUDGET_FILES)]


REPORT_FILES += list(GRID_FILES.values())
# The dormancy leaderboard (dormant.report.leaderboard): every attack x defense, what the defense reached and what
# the three re-activations and gUAA get back, BEC per channel fraction, queries to 90% of the white-box ASR.
LEADERBOARD_ROWS = [
    {"attack": a, "defense": d, **{k: analysis_file(f"{k}.json", a, d)
                                   for k in ("metrics", "bec", "reactivation", "query", "transfer")}}
    for a in ATTACKS
    for d in [r["defense"] for r in GRID_ROWS if r["attack"] == a and r["defense"] != "backdoor"]
]
LEADERBOARD_FILES = {ext: report_file(f"leaderboard.{ext}") for ext in ("csv", "md", "tex", "png", "pdf", "html")}
REPORT_FILES += list(LEADERBOARD_FILES.values())


rule report:
    localrule: True
    output:
        csv=report(TABLE_FILES["csv"], caption="../report/table.rst", category="Tables"),
        md=TABLE_FILES["md"],
        json=TABLE_FILES["json"],
        fig_bec=report(TABLE_FILES["fig_bec"], caption="../report/bec_vs_asr.rst", category="Figures"),
        fig_ra=report(TABLE_FILES["fig_ra"], caption="../report/reactivation.rst", category="Figures"),
        fig_trig=report(TABLE_FILES["fig_trig"], caption="../report/triggers.rst", category="Figures"),
        obs_csv=report(TABLE_FILES["obs_csv"], caption="../report/observation.rst", category="Tables"),
        fig_obs=report(TABLE_FILES["fig_obs"], caption="../report/observation.rst", category="Figures"),
        rounds_csv=report(TABLE_FILES["rounds_csv"], caption="../report/pbe_rounds.rst", category="Tables"),
        fig_rounds=report(TABLE_FILES["fig_rounds"], caption="../report/pbe_rounds.rst", category="Figures"),
        histories=report(
            list(HISTORIES),
            caption="../report/history.rst",
            category="Training histories",
        ),
        paper=paper_files(TABLE_FILES),  # for the paper: each table as LaTeX, each figure as PDF
    input:
        rows=[r[k] for r in ROWS for k in ("metrics", "bec", "reactivation", "query", "transfer")],
        data=DATASET,
        triggers=[trigger_file(a) for a in ATTACKS],
        sidecars=list(HISTORIES.values()),
        observations=list(OBSERVATIONS),
        code=code("report"),
    params:
        p=lambda w: as_json({"report": config["report"], "seed": config["seed"]}),
        rows=as_json(ROWS),
        triggers=as_json({a: trigger_file(a) for a in ATTACKS}),  # as trained: what every analysis used
        histories=as_json(HISTORIES),
        observations=as_json(OBSERVATIONS),
        defenses=as_json(DEFENSE_SIDECARS),
    log:
        log_file("report"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("report"),
        runtime=runtime_min("report"),
    shell:
        "dormant report --params {params.p:q} --rows {params.rows:q} --dataset {input.data:q} "
        "--triggers {params.triggers:q} --table-csv {output.csv:q} --table-md {output.md:q} --table-json {output.json:q} "
        "--fig-bec {output.fig_bec:q} --fig-reactivation {output.fig_ra:q} --fig-triggers {output.fig_trig:q} "
        "--histories {params.histories:q} --observations {params.observations:q} --defenses {params.defenses:q} "
        "--observation-csv {output.obs_csv:q} --fig-observation {output.fig_obs:q} "
        "--rounds-csv {output.rounds_csv:q} --fig-rounds {output.fig_rounds:q} "
        "> {log:q} 2>&1"


rule report_blackbox:
    localrule: True
    output:
        **{k: report(v, caption="../report/blackbox.rst", category="Black-box re-activation")
           for k, v in BLACKBOX_FILES.items()},
        paper=paper_files(BLACKBOX_FILES),
    input:
        rows=[r[k] for r in ROWS for k in ("reactivation", "query", "transfer", "evidence") if r[k]],
        code=code("report_blackbox"),
    params:
        p=as_json({"surrogates": {s: {"arch": SURROGATES[s]["arch"], "defense_types": attacker_defense_types(s)}
                                  for s in SURROGATE_SETS},
                   "model_types": {d: config["defenses"][d]["type"] for d in DEFENSES}, "models": MODELS}),
        rows=as_json(ROWS),
    log:
        log_file("report_blackbox"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("report_blackbox"),
        runtime=runtime_min("report_blackbox"),
    shell:
        "dormant report-blackbox --params {params.p:q} --rows {params.rows:q} "
        + " ".join(f"--{k.replace('_', '-')} {{output.{k}:q}}" for k in BLACKBOX_FILES)
        + " > {log:q} 2>&1"


rule report_defenses:
    localrule: True
    output:
        csv=report(GRID_FILES["csv"], caption="../report/defense_grid.rst", category="Tables"),
        md=GRID_FILES["md"],
        fig=report(GRID_FILES["fig"], caption="../report/defense_grid.rst", category="Figures"),
        paper=paper_files(GRID_FILES),
    input:
        metrics=[r["metrics"] for r in GRID_ROWS],
        sidecars=[r["sidecar"] for r in GRID_ROWS if r["sidecar"]],
        code=code("report_defenses"),
    params:
        rows=as_json(GRID_ROWS),
    log:
        log_file("report_defenses"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("report_defenses"),
        runtime=runtime_min("report_defenses"),
    shell:
        "dormant report-defenses --params '{{}}' --rows {params.rows:q} --csv {output.csv:q} --md {output.md:q} "
        "--fig {output.fig:q} > {log:q} 2>&1"


rule report_budget:
    localrule: True
    output:
        csv=report(BUDGET_FILES["csv"], caption="../report/budget.rst", category="Tables"),
        md=BUDGET_FILES["md"],
        fig=report(BUDGET_FILES["fig"], caption="../report/budget.rst", category="Figures"),
        paper=paper_files(BUDGET_FILES),
    input:
        csvs=[r["csv"] for r in BUDGET_ROWS],
        code=code("report_budget"),
    params:
        rows=as_json(BUDGET_ROWS),
    log:
        log_file("report_budget"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("report_budget"),
        runtime=runtime_min("report_budget"),
    shell:
        "dormant report-budget --params '{{}}' --rows {params.rows:q} --csv {output.csv:q} --md {output.md:q} "
        "--fig {output.fig:q} > {log:q} 2>&1"


rule leaderboard:
    localrule: True
    output:
        csv=report(LEADERBOARD_FILES["csv"], caption="../report/leaderboard.rst", category="Tables"),
        md=LEADERBOARD_FILES["md"],
        tex=LEADERBOARD_FILES["tex"],
        png=report(LEADERBOARD_FILES["png"], caption="../report/leaderboard.rst", category="Figures"),
        pdf=LEADERBOARD_FILES["pdf"],
        html=LEADERBOARD_FILES["html"],
    input:
        rows=[r[k] for r in LEADERBOARD_ROWS for k in ("metrics", "bec", "reactivation", "query", "transfer")],
        code=code("leaderboard"),
    params:
        p=as_json({"report": config["report"], "data": {"dataset": config["data"]["dataset"]},
                   "model": {"arch": config["model"]["arch"]}}),
        rows=as_json(LEADERBOARD_ROWS),
    log:
        log_file("leaderboard"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("leaderboard"),
        runtime=runtime_min("leaderboard"),
    shell:
        "dormant leaderboard --params {params.p:q} --rows {params.rows:q} --csv {output.csv:q} --md {output.md:q} "
        "--tex {output.tex:q} --png {output.png:q} --html {output.html:q} > {log:q} 2>&1"
