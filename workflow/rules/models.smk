# Training (clean and backdoored models) and defenses. Training jobs go first (priority): they are the long
# ones everything else waits for. Each job resumes from its epoch checkpoint under resume/ if interrupted.
# Stages: workflow/lib/dormant/stages/models.py (one function per rule, same name).

TRAIN_PARAMS = lambda w: as_json(with_clip({"model": config["model"], "train": config["train"], "seed": config["seed"]}))


rule train_clean:
    wildcard_constraints:
        clean=NEVER if CLEAN_IMPORT else "clean",
    output:
        model=CLEAN_PATTERN,
        meta=sidecar(CLEAN_PATTERN),
    input:
        data=DATASET,
        code=code("train_clean"),
    params:
        p=TRAIN_PARAMS,
        ckpt=resume_file("{clean}"),
    log:
        log_file("train_{clean}"),
    benchmark:
        bench_file("train_{clean}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    priority: 10
    resources:
        mem_mb=mem_mb("train_clean"),
        runtime=runtime_min("train_clean"),
        gpu=1,
    shell:
        "dormant train-clean --threads {threads} --params {params.p:q} --dataset {input.data:q} "
        "--model {output.model:q} --checkpoint {params.ckpt:q} > {log:q} 2>&1"


rule train_backdoor:
    wildcard_constraints:
        attack=one_of(sorted(set(ATTACKS) - set(IMPORTED_ATTACKS))),
    output:
        model=backdoored(),
        meta=sidecar(backdoored()),
        trigger=trigger_file(),
        trigger_meta=sidecar(trigger_file()),
    input:
        data=DATASET,
        trigger=initial_trigger_file(),
        code=code("train_backdoor"),
    params:
        p=TRAIN_PARAMS,
        ckpt=resume_file("{attack}_backdoor"),
    log:
        log_file("train_backdoor_{attack}"),
    benchmark:
        bench_file("train_backdoor_{attack}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    priority: 10
    resources:
        mem_mb=mem_mb("train_backdoor"),
        runtime=runtime_min("train_backdoor"),
        gpu=1,
    shell:
        "dormant train-backdoor --threads {threads} --params {params.p:q} --dataset {input.data:q} "
        "--trigger {input.trigger:q} --trained-trigger {output.trigger:q} --model {output.model:q} "
        "--checkpoint {params.ckpt:q} > {log:q} 2>&1"


rule defend:
    wildcard_constraints:
        defense=one_of(sorted(set(DEFENSES) - set(IMPORTED_DEFENSES))),
    output:
        model=model_file(model="{defense}"),
        meta=sidecar(model_file(model="{defense}")),
    input:
        data=DATASET,
        subset=SUBSET,
        trigger=trigger_file(),
        backdoored=backdoored(),
        code=code("defend"),
    params:
        p=lambda w: as_json({"defense": config["defenses"][w.defense], "seed": config["seed"]}),
        ckpt=resume_file("{attack}_{defense}"),
    log:
        log_file("defend_{attack}_{defense}"),
    benchmark:
        bench_file("defend_{attack}_{defense}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("defend"),
        runtime=runtime_min("defend"),
        gpu=1,
    shell:
        "dormant defend --threads {threads} --params {params.p:q} --dataset {input.data:q} --subset {input.subset:q} "
        "--trigger {input.trigger:q} --backdoored {input.backdoored:q} --model {output.model:q} "
        "--checkpoint {params.ckpt:q} > {log:q} 2>&1"


# Models trained elsewhere (docs/operations.md "Models trained elsewhere"): the same files as train_clean,
# train_backdoor and defend, read from the config's files (BackdoorBench records or state dicts) instead. The
# files are user paths (dormant.userpaths: checked before the first job), not inputs, so that a dry run expands
# without them, like data.path; a new path reruns the job (params), a file replaced under the same path does not.
rule import_clean:
    wildcard_constraints:
        clean="clean" if CLEAN_IMPORT else NEVER,
    output:
        model=CLEAN_PATTERN,
        meta=sidecar(CLEAN_PATTERN),
    input:
        data=DATASET,
        code=code("import_clean"),
    params:
        p=lambda w: as_json({"model": config["model"], "seed": config["seed"]}),
        src=lambda w: user_file(config["model"]["import"]["path"]),
    log:
        log_file("import_{clean}"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("import_clean"),
        runtime=runtime_min("import_clean"),
    shell:
        "dormant import-clean --params {params.p:q} --dataset {input.data:q} --source {params.src:q} "
        "--model {output.model:q} > {log:q} 2>&1"


rule import_backdoor:
    wildcard_constraints:
        attack=one_of(IMPORTED_ATTACKS),
    output:
        model=backdoored(),
        meta=sidecar(backdoored()),
        trigger=trigger_file(),
        trigger_meta=sidecar(trigger_file()),
    input:
        data=DATASET,
        trigger=initial_trigger_file(),
        code=code("import_backdoor"),
    params:
        p=lambda w: as_json({"model": config["model"], "attack": config["attacks"][w.attack], "seed": config["seed"]}),
        src=lambda w: user_file(config["attacks"][w.attack]["import"]["path"]),
    log:
        log_file("import_backdoor_{attack}"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("import_backdoor"),
        runtime=runtime_min("import_backdoor"),
    shell:
        "dormant import-backdoor --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--source {params.src:q} --model {output.model:q} --trained-trigger {output.trigger:q} > {log:q} 2>&1"


rule import_defense:
    wildcard_constraints:
        defense=one_of(IMPORTED_DEFENSES),
    output:
        model=model_file(model="{defense}"),
        meta=sidecar(model_file(model="{defense}")),
    input:
        data=DATASET,
        backdoored=backdoored(),
        code=code("import_defense"),
    params:
        p=lambda w: as_json({"model": config["model"], "defense": config["defenses"][w.defense],
                             "attack": w.attack, "seed": config["seed"]}),
        src=lambda w: user_file(config["defenses"][w.defense]["models"][w.attack]),
    log:
        log_file("import_defense_{attack}_{defense}"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("import_defense"),
        runtime=runtime_min("import_defense"),
    shell:
        "dormant import-defense --params {params.p:q} --dataset {input.data:q} --backdoored {input.backdoored:q} "
        "--source {params.src:q} --model {output.model:q} > {log:q} 2>&1"
