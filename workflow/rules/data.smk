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


rule trigger:
    output:
        trigger=TRIGGER,
        meta=f"{R}/attacks/{{attack}}/trigger.json",
    input:
        data=DATASET,
        code=lib("attacks/__init__.py", "attacks/base.py"),
        code_attack=lambda w: lib(f"attacks/{config['attacks'][w.attack]['type']}.py"),
    params:
        p=lambda w: as_json({"attack": config["attacks"][w.attack], "name": w.attack, "seed": config["seed"]}),
    log:
        f"{LOGS}/trigger_{{attack}}.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "dormant trigger --params {params.p:q} --dataset {input.data:q} --trigger {output.trigger:q} > {log:q} 2>&1"
