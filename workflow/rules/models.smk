# Training (clean and backdoored models) and defenses. Training jobs go first (priority): they are the long
# ones everything else waits for. Each job resumes from its epoch checkpoint under resume/ if interrupted.
# Stages: workflow/lib/dormant/stages/models.py (one function per rule, same name).

TRAIN_PARAMS = lambda w: as_json(with_clip({"model": config["model"], "train": config["train"], "seed": config["seed"]}))


rule train_clean:
    output:
        model=CLEAN_MODEL,
        meta=sidecar(CLEAN_MODEL),
    input:
        data=DATASET,
        code=code("train_clean"),
    params:
        p=TRAIN_PARAMS,
        ckpt=resume_file("clean"),
    log:
        log_file("train_clean"),
    benchmark:
        bench_file("train_clean")
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
