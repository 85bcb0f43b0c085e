# The tidy table (CSV + Markdown) and the figures.

ROWS = [
    {
        "attack": a,
        "model": m,
        "metrics": f"{R}/analysis/{a}/{m}/metrics.json",
        "bec": f"{R}/analysis/{a}/{m}/bec.json",
        "reactivation": f"{R}/analysis/{a}/{m}/reactivation.json",
    }
    for a in ATTACKS
    for m in MODELS
]
# One training-history CSV per trained or defended model (DVC plots), from the model's sidecar.
HISTORIES = {f"{R}/report/history/clean.csv": f"{R}/models/clean/model.json"} | {
    f"{R}/report/history/{a}_{m}.csv": f"{R}/models/{a}/{m}/model.json" for a in ATTACKS for m in MODELS[1:]
}
REPORT_FILES = [
    f"{R}/report/table.csv",
    f"{R}/report/table.md",
    f"{R}/report/metrics.json",
    f"{R}/report/bec_vs_asr.png",
    f"{R}/report/reactivation.png",
    f"{R}/report/triggers.png",
    *HISTORIES,
]


rule report:
    output:
        csv=report(f"{R}/report/table.csv", caption="../report/table.rst", category="Tables"),
        md=f"{R}/report/table.md",
        json=f"{R}/report/metrics.json",
        fig_bec=report(f"{R}/report/bec_vs_asr.png", caption="../report/bec_vs_asr.rst", category="Figures"),
        fig_ra=report(f"{R}/report/reactivation.png", caption="../report/reactivation.rst", category="Figures"),
        fig_trig=report(f"{R}/report/triggers.png", caption="../report/triggers.rst", category="Figures"),
        histories=report(
            list(HISTORIES),
            caption="../report/history.rst",
            category="Training histories",
        ),
    input:
        rows=[r[k] for r in ROWS for k in ("metrics", "bec", "reactivation")],
        data=DATASET,
        triggers=expand(TRIGGER, attack=ATTACKS),
        sidecars=list(HISTORIES.values()),
        code=lib("report.py"),
    params:
        p=lambda w: as_json({"report": config["report"], "seed": config["seed"]}),
        rows=as_json(ROWS),
        triggers=as_json({a: f"{R}/attacks/{a}/trigger.safetensors" for a in ATTACKS}),
        histories=as_json(HISTORIES),
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
        "--histories {params.histories:q} "
        "> {log:q} 2>&1"
