# Dataset preparation, the defender's clean subset, and each attack's trigger + poison index.


rule prepare_data:
    output:
        data=DATASET,
        meta=f"{R}/data/dataset.json",
    input:
        code=lib("data.py", "io.py"),
    params:
        p=lambda w: as_json({"data": config["data"], "seed": config["seed"]}),
    log:
        f"{LOGS}/prepare_data.log",
    benchmark:
        f"{BENCH}/prepare_data.tsv"
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "dormant prepare-data --params {params.p:q} --dataset {output.data:q} > {log:q} 2>&1"


rule clean_subset:
    output:
        subset=SUBSET,
    input:
        data=DATASET,
        code=lib("stages.py"),
    params:
        p=lambda w: as_json({"defense_data": config["defense_data"], "seed": config["seed"]}),
    log:
        f"{LOGS}/clean_subset.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dormant clean-subset --params {params.p:q} --dataset {input.data:q} --subset {output.subset:q} > {log:q} 2>&1"


rule attack_resource:
    output:
        resource=RESOURCE,
        meta=f"{R}/attacks/{{attack}}/resource.json",
    input:
        data=DATASET,
        clean=lambda w: CLEAN_MODEL if attack_class(w.attack).needs_clean_model else [],
        code=lambda w: attack_code(w.attack),
    params:
        p=lambda w: as_json({"attack": config["attacks"][w.attack], "name": w.attack, "seed": config["seed"]}),
        clean=lambda w, input: f"--clean {input.clean}" if input.clean else "",
    log:
        f"{LOGS}/attack_resource_{{attack}}.log",
    benchmark:
        f"{BENCH}/attack_resource_{{attack}}.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "dormant --threads {threads} attack-resource --params {params.p:q} --dataset {input.data:q} {params.clean} "
        "--resource {output.resource:q} > {log:q} 2>&1"


rule trigger:
    output:
        trigger=INITIAL_TRIGGER,
        meta=f"{R}/attacks/{{attack}}/trigger.json",
    input:
        data=DATASET,
        resource=lambda w: RESOURCE if attack_class(w.attack).resource_stage else [],
        code=lambda w: attack_code(w.attack),
    params:
        p=lambda w: as_json({"attack": config["attacks"][w.attack], "name": w.attack, "seed": config["seed"]}),
        resource=lambda w, input: f"--resource {input.resource}" if input.resource else "",
    log:
        f"{LOGS}/trigger_{{attack}}.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "dormant trigger --params {params.p:q} --dataset {input.data:q} {params.resource} "
        "--trigger {output.trigger:q} > {log:q} 2>&1"
