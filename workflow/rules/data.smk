# Dataset preparation, the defender's clean subset, and each attack's resource and trigger + poison index.
# Stages: workflow/lib/dormant/stages/data.py (one function per rule, same name).


rule prepare_data:
    localrule: True
    output:
        data=DATASET,
        meta=sidecar(DATASET),
    input:
        code=code("prepare_data"),
    params:
        p=lambda w: as_json(with_clip({"data": config["data"], "seed": config["seed"]})),
    log:
        log_file("prepare_data"),
    benchmark:
        bench_file("prepare_data")
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("prepare_data"),
        runtime=runtime_min("prepare_data"),
    shell:
        "dormant prepare-data --params {params.p:q} --dataset {output.data:q} > {log:q} 2>&1"


rule clean_subset:
    output:
        subset=SUBSET,
    input:
        data=rules.prepare_data.output.data,
        code=code("clean_subset"),
    params:
        p=lambda w: as_json({"defense_data": config["defense_data"], "seed": config["seed"]}),
    log:
        log_file("clean_subset"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("clean_subset"),
        runtime=runtime_min("clean_subset"),
    shell:
        "dormant clean-subset --params {params.p:q} --dataset {input.data:q} --subset {output.subset:q} > {log:q} 2>&1"


rule attack_resource:
    output:
        resource=resource_file(),
        meta=sidecar(resource_file()),
    input:
        data=rules.prepare_data.output.data,
        clean=lambda w: CLEAN_MODEL if attack_class(w.attack).needs_clean_model else [],
        code=code("attack_resource"),
    params:
        p=lambda w: as_json({"attack": config["attacks"][w.attack], "name": w.attack, "seed": config["seed"]}),
        clean=lambda w, input: f"--clean {input.clean}" if input.clean else "",
    log:
        log_file("attack_resource_{attack}"),
    benchmark:
        bench_file("attack_resource_{attack}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("attack_resource"),
        runtime=runtime_min("attack_resource"),
        gpu=1,
    shell:
        "dormant attack-resource --threads {threads} --params {params.p:q} --dataset {input.data:q} {params.clean} "
        "--resource {output.resource:q} > {log:q} 2>&1"


rule trigger:
    output:
        trigger=initial_trigger_file(),
        meta=sidecar(initial_trigger_file()),
    input:
        data=rules.prepare_data.output.data,
        resource=lambda w: resource_file(w.attack) if attack_class(w.attack).resource_stage else [],
        code=code("trigger"),
    params:
        p=lambda w: as_json(with_clip({"attack": config["attacks"][w.attack], "name": w.attack, "seed": config["seed"]})),
        resource=lambda w, input: f"--resource {input.resource}" if input.resource else "",
    log:
        log_file("trigger_{attack}"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("trigger"),
        runtime=runtime_min("trigger"),
    shell:
        "dormant trigger --params {params.p:q} --dataset {input.data:q} {params.resource} "
        "--trigger {output.trigger:q} > {log:q} 2>&1"
