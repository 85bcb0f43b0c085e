# Per (attack, model): metrics (C-ACC, ASR, RA, DER), BEC, white-box re-activation + gUAA.
# model is "clean" (the clean model under this attack's trigger), "backdoor", or a defense name.

ANALYSIS = f"{R}/analysis/{{attack}}/{{model}}"


rule metrics:
    output:
        f"{ANALYSIS}/metrics.json",
    input:
        data=DATASET,
        trigger=TRIGGER,
        model=analysed_model,
        backdoored=f"{R}/models/{{attack}}/backdoor/model.safetensors",
        code=lib("metrics.py"),
    params:
        p=lambda w: as_json({"role": role(w), "seed": config["seed"]}),
    log:
        f"{LOGS}/metrics_{{attack}}_{{model}}.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "dormant metrics --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --backdoored {input.backdoored:q} --metrics {output:q} > {log:q} 2>&1"


rule bec:
    output:
        f"{ANALYSIS}/bec.json",
    input:
        data=DATASET,
        trigger=TRIGGER,
        model=analysed_model,
        backdoored=f"{R}/models/{{attack}}/backdoor/model.safetensors",
        clean=f"{R}/models/clean/model.safetensors",
        code=lib("bec.py", "cka.py", "features.py"),
    params:
        p=lambda w: as_json({"bec": config["bec"], "seed": config["seed"]}),
    log:
        f"{LOGS}/bec_{{attack}}_{{model}}.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=6000,
        runtime=60,
    shell:
        "dormant bec --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --backdoored {input.backdoored:q} --clean {input.clean:q} --bec {output:q} "
        "> {log:q} 2>&1"


rule reactivate:
    output:
        result=f"{ANALYSIS}/reactivation.json",
        delta=f"{ANALYSIS}/delta.safetensors",
    input:
        data=DATASET,
        trigger=TRIGGER,
        model=analysed_model,
        code=lib("reactivation.py"),
    params:
        p=lambda w: as_json({"reactivation": config["reactivation"], "seed": config["seed"]}),
    log:
        f"{LOGS}/reactivate_{{attack}}_{{model}}.log",
    benchmark:
        f"{BENCH}/reactivate_{{attack}}_{{model}}.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "dormant --threads {threads} reactivate --params {params.p:q} --dataset {input.data:q} "
        "--trigger {input.trigger:q} --model {input.model:q} --result {output.result:q} "
        "--delta {output.delta:q} > {log:q} 2>&1"


rule observe:
    output:
        f"{ANALYSIS}/observation.json",
    input:
        data=DATASET,
        trigger=TRIGGER,
        model=analysed_model,
        code=lib("observation.py", "adversarial.py"),
    params:
        p=lambda w: as_json({"observation": config["observation"], "seed": config["seed"]}),
    log:
        f"{LOGS}/observe_{{attack}}_{{model}}.log",
    conda:
        "../envs/dormant.yaml"
    wildcard_constraints:
        model="|".join(OBSERVED),
    resources:
        mem_mb=3000,
        runtime=60,
    shell:
        "dormant observe --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --observation {output:q} > {log:q} 2>&1"
