# Training (clean and backdoored models) and defenses. Training jobs go first (priority): they are
# the long ones everything else waits for. Each job resumes from its epoch
# checkpoint under resume/ if it was interrupted.

TRAIN_LIB = lib("training.py", "models.py", "augment.py", "metrics.py", "checkpoints.py")


rule train_clean:
    output:
        model=f"{R}/models/clean/model.safetensors",
        meta=f"{R}/models/clean/model.json",
    input:
        data=DATASET,
        code=TRAIN_LIB,
    params:
        p=lambda w: as_json({"model": config["model"], "train": config["train"], "seed": config["seed"]}),
        ckpt=f"{RESUME}/clean.safetensors",
    log:
        f"{LOGS}/train_clean.log",
    benchmark:
        f"{BENCH}/train_clean.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    priority: 10
    resources:
        mem_mb=6000,
        runtime=720,
    shell:
        "dormant --threads {threads} train --params {params.p:q} --dataset {input.data:q} "
        "--model {output.model:q} --checkpoint {params.ckpt:q} > {log:q} 2>&1"


rule train_backdoor:
    output:
        model=f"{R}/models/{{attack}}/backdoor/model.safetensors",
        meta=f"{R}/models/{{attack}}/backdoor/model.json",
        trigger=TRIGGER,
        trigger_meta=f"{R}/models/{{attack}}/backdoor/trigger.json",
    input:
        data=DATASET,
        trigger=INITIAL_TRIGGER,
        code=TRAIN_LIB,
        code_attack=lambda w: attack_code(w.attack),
    params:
        p=lambda w: as_json({"model": config["model"], "train": config["train"], "seed": config["seed"]}),
        ckpt=f"{RESUME}/{{attack}}_backdoor.safetensors",
    log:
        f"{LOGS}/train_backdoor_{{attack}}.log",
    benchmark:
        f"{BENCH}/train_backdoor_{{attack}}.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    priority: 10
    resources:
        mem_mb=6000,
        runtime=720,
    shell:
        "dormant --threads {threads} train --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--trained-trigger {output.trigger:q} --model {output.model:q} --checkpoint {params.ckpt:q} > {log:q} 2>&1"


rule defend:
    output:
        model=f"{R}/models/{{attack}}/{{defense}}/model.safetensors",
        meta=f"{R}/models/{{attack}}/{{defense}}/model.json",
    input:
        data=DATASET,
        subset=SUBSET,
        trigger=TRIGGER,
        backdoored=f"{R}/models/{{attack}}/backdoor/model.safetensors",
        code=TRAIN_LIB,
        code_defense=lib("defenses/__init__.py", "defenses/base.py"),
        code_type=lambda w: defense_code(config["defenses"][w.defense]["type"]),
    params:
        p=lambda w: as_json({"defense": config["defenses"][w.defense], "seed": config["seed"]}),
        ckpt=f"{RESUME}/{{attack}}_{{defense}}.safetensors",
    log:
        f"{LOGS}/defend_{{attack}}_{{defense}}.log",
    benchmark:
        f"{BENCH}/defend_{{attack}}_{{defense}}.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=720,
    shell:
        "dormant --threads {threads} defend --params {params.p:q} --dataset {input.data:q} --subset {input.subset:q} "
        "--trigger {input.trigger:q} "
        "--backdoored {input.backdoored:q} --model {output.model:q} --checkpoint {params.ckpt:q} > {log:q} 2>&1"
