# Black-box re-activation (methods.md section 7) and the evidence that it restores the original backdoor.
#   query:             Square-Attack search on output scores, per (attack, model)
#   transfer:          the attacker's own surrogates (its backdoored model of some architecture, defended by
#                      defenses it picks, with its own seed and clean subset) -> one delta per surrogate set;
#                      then evaluated on every target model. The optimising job has no target model as input.
#   evidence:          CKA and random-noise analyses of white-box re-activation vs gUAA, per defended model.

rule query:
    output:
        result=f"{ANALYSIS}/query.json",
        delta=f"{ANALYSIS}/query_delta.safetensors",
    input:
        data=DATASET,
        trigger=TRIGGER,
        model=analysed_model,
        code=lib("query.py", "reactivation.py"),
    params:
        p=lambda w: as_json({"query": config["query"], "seed": config["seed"]}),
    log:
        f"{LOGS}/query_{{attack}}_{{model}}.log",
    benchmark:
        f"{BENCH}/query_{{attack}}_{{model}}.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=240,
    shell:
        "dormant --threads {threads} query --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --result {output.result:q} --delta {output.delta:q} > {log:q} 2>&1"


rule attacker_subset:
    output:
        subset=f"{ATTACKER}/clean_subset.json",
    input:
        data=DATASET,
        code=lib("stages.py"),
    params:
        p=as_json({"defense_data": config["defense_data"], "seed": ATTACKER_SEED}),
    log:
        f"{LOGS}/attacker_subset.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dormant clean-subset --params {params.p:q} --dataset {input.data:q} --subset {output.subset:q} > {log:q} 2>&1"


rule train_surrogate:
    output:
        model=f"{ATTACKER}/{{attack}}/{{arch}}/backdoor/model.safetensors",
        meta=f"{ATTACKER}/{{attack}}/{{arch}}/backdoor/model.json",
    input:
        data=DATASET,
        trigger=TRIGGER,
        code=TRAIN_LIB + lib("archs.py"),
    params:
        p=lambda w: as_json({"model": {"arch": w.arch}, "train": config["train"], "seed": ATTACKER_SEED}),
        ckpt=f"{RESUME}/attacker_{{attack}}_{{arch}}_backdoor.safetensors",
    log:
        f"{LOGS}/train_surrogate_{{attack}}_{{arch}}.log",
    benchmark:
        f"{BENCH}/train_surrogate_{{attack}}_{{arch}}.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    priority: 10
    resources:
        mem_mb=6000,
        runtime=720,
    shell:
        "dormant --threads {threads} train --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {output.model:q} --checkpoint {params.ckpt:q} > {log:q} 2>&1"


rule defend_surrogate:
    output:
        model=f"{ATTACKER}/{{attack}}/{{arch}}/{{sdefense}}/model.safetensors",
        meta=f"{ATTACKER}/{{attack}}/{{arch}}/{{sdefense}}/model.json",
    input:
        data=DATASET,
        subset=rules.attacker_subset.output.subset,
        trigger=TRIGGER,
        backdoored=lambda w: attacker_backdoor(w.attack, w.arch),
        code=TRAIN_LIB + lib("archs.py"),
        code_defense=lib("defenses/__init__.py", "defenses/base.py"),
        code_type=lambda w: defense_code(config["transfer"]["defenses"][w.sdefense]["type"]),
    params:
        p=lambda w: as_json({"defense": config["transfer"]["defenses"][w.sdefense], "seed": ATTACKER_SEED}),
        ckpt=f"{RESUME}/attacker_{{attack}}_{{arch}}_{{sdefense}}.safetensors",
    log:
        f"{LOGS}/defend_surrogate_{{attack}}_{{arch}}_{{sdefense}}.log",
    benchmark:
        f"{BENCH}/defend_surrogate_{{attack}}_{{arch}}_{{sdefense}}.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=720,
    shell:
        "dormant --threads {threads} defend --params {params.p:q} --dataset {input.data:q} --subset {input.subset:q} "
        "--trigger {input.trigger:q} --backdoored {input.backdoored:q} --model {output.model:q} "
        "--checkpoint {params.ckpt:q} > {log:q} 2>&1"


rule transfer_optimise:
    output:
        result=f"{R}/transfer/{{attack}}/{{surrogate}}/transfer.json",
        delta=f"{R}/transfer/{{attack}}/{{surrogate}}/delta.safetensors",
    input:
        data=DATASET,
        trigger=TRIGGER,
        surrogates=surrogate_models,
        code=lib("transfer.py", "reactivation.py"),
    params:
        p=lambda w: as_json({"transfer": {k: v for k, v in config["transfer"].items()
                                          if k not in ("surrogates", "defenses")},
                             "surrogate": SURROGATES[w.surrogate], "seed": ATTACKER_SEED}),
        surrogates=lambda w, input: as_json(list(input.surrogates)),
    log:
        f"{LOGS}/transfer_optimise_{{attack}}_{{surrogate}}.log",
    benchmark:
        f"{BENCH}/transfer_optimise_{{attack}}_{{surrogate}}.tsv"
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "dormant --threads {threads} transfer-optimise --params {params.p:q} --dataset {input.data:q} "
        "--trigger {input.trigger:q} --surrogates {params.surrogates:q} --result {output.result:q} "
        "--delta {output.delta:q} > {log:q} 2>&1"


rule transfer_evaluate:
    output:
        f"{ANALYSIS}/transfer.json",
    input:
        data=DATASET,
        trigger=TRIGGER,
        model=analysed_model,
        deltas=expand(f"{R}/transfer/{{{{attack}}}}/{{surrogate}}/delta.safetensors", surrogate=SURROGATE_SETS),
        code=lib("transfer.py"),
    params:
        p=lambda w: as_json({"seed": config["seed"]}),
        deltas=lambda w: as_json({s: f"{R}/transfer/{w.attack}/{s}/delta.safetensors" for s in SURROGATE_SETS}),
    log:
        f"{LOGS}/transfer_evaluate_{{attack}}_{{model}}.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "dormant transfer-evaluate --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --deltas {params.deltas:q} --result {output:q} > {log:q} 2>&1"


rule evidence:
    output:
        f"{ANALYSIS}/evidence.json",
    input:
        data=DATASET,
        trigger=TRIGGER,
        model=analysed_model,
        backdoored=f"{R}/models/{{attack}}/backdoor/model.safetensors",
        delta=f"{ANALYSIS}/delta.safetensors",
        code=lib("evidence.py", "cka.py", "adversarial.py", "reactivation.py"),
    params:
        p=lambda w: as_json({"evidence": config["evidence"], "seed": config["seed"]}),
    log:
        f"{LOGS}/evidence_{{attack}}_{{model}}.log",
    conda:
        "../envs/dormant.yaml"
    wildcard_constraints:
        model="|".join(EVIDENCED),
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "dormant evidence --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --backdoored {input.backdoored:q} --delta {input.delta:q} --result {output:q} "
        "> {log:q} 2>&1"
