# Per (attack, model): metrics (C-ACC, ASR, RA, DER), BEC, white-box re-activation + gUAA, PBE's observation;
# per (attack, defense) the budget ablation (re-activation + gUAA at every eps of reactivation.budgets).
# model is "clean" (the clean model under this attack's trigger), "backdoor", or a defense name.
# Stages: workflow/lib/dormant/stages/analysis.py (one function per rule, same name).


rule metrics:
    output:
        analysis_file("metrics.json"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        model=analysed_model,
        backdoored=backdoored(),
        code=code("metrics"),
    params:
        p=lambda w: as_json({"role": role(w), "seed": config["seed"]}),
    log:
        log_file("metrics_{attack}_{model}"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("metrics"),
        runtime=runtime_min("metrics"),
        gpu=1,
    shell:
        "dormant metrics --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --backdoored {input.backdoored:q} --metrics {output:q} > {log:q} 2>&1"


rule bec:
    output:
        analysis_file("bec.json"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        model=analysed_model,
        backdoored=backdoored(),
        clean=CLEAN_MODEL,
        code=code("bec"),
    params:
        p=lambda w: as_json({"bec": config["bec"], "seed": config["seed"]}),
    log:
        log_file("bec_{attack}_{model}"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("bec"),
        runtime=runtime_min("bec"),
        gpu=1,
    shell:
        "dormant bec --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --backdoored {input.backdoored:q} --clean {input.clean:q} --bec {output:q} "
        "> {log:q} 2>&1"


rule reactivate:
    output:
        result=analysis_file("reactivation.json"),
        delta=analysis_file("delta.safetensors"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        model=analysed_model,
        code=code("reactivate"),
    params:
        # without `budgets`: the budget ablation (rule budget) is its own job; editing its list reruns only that
        p=lambda w: as_json({"reactivation": {k: v for k, v in config["reactivation"].items() if k != "budgets"},
                             "seed": config["seed"]}),
    log:
        log_file("reactivate_{attack}_{model}"),
    benchmark:
        bench_file("reactivate_{attack}_{model}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("reactivate"),
        runtime=runtime_min("reactivate"),
        gpu=1,
    shell:
        "dormant reactivate --threads {threads} --params {params.p:q} --dataset {input.data:q} "
        "--trigger {input.trigger:q} --model {input.model:q} --result {output.result:q} "
        "--delta {output.delta:q} > {log:q} 2>&1"


rule budget:
    output:
        result=analysis_file("budget.csv"),
        meta=analysis_file("budget.json"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        model=analysed_model,
        code=code("budget"),
    params:
        p=lambda w: as_json({"reactivation": config["reactivation"], "seed": config["seed"]}),
    log:
        log_file("budget_{attack}_{model}"),
    benchmark:
        bench_file("budget_{attack}_{model}")
    conda:
        "../envs/dormant.yaml"
    wildcard_constraints:
        model="|".join(BUDGETED) if BUDGETED else "(?!x)x",
    threads: 1
    resources:
        mem_mb=mem_mb("budget"),
        runtime=runtime_min("budget"),
        gpu=1,
    shell:
        "dormant budget --threads {threads} --params {params.p:q} --dataset {input.data:q} "
        "--trigger {input.trigger:q} --model {input.model:q} --result {output.result:q} > {log:q} 2>&1"


rule observe:
    output:
        analysis_file("observation.json"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        model=analysed_model,
        code=code("observe"),
    params:
        p=lambda w: as_json({"observation": config["observation"], "seed": config["seed"]}),
    log:
        log_file("observe_{attack}_{model}"),
    conda:
        "../envs/dormant.yaml"
    wildcard_constraints:
        model="|".join(OBSERVED),
    resources:
        mem_mb=mem_mb("observe"),
        runtime=runtime_min("observe"),
        gpu=1,
    shell:
        "dormant observe --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --observation {output:q} > {log:q} 2>&1"
