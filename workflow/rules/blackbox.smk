# Black-box re-activation (docs/methods.md section 7) and the evidence that it restores the original backdoor.
#   query:             Square-Attack search on output scores, per (attack, model)
#   transfer:          the attacker's own surrogates (its backdoored model of some architecture, defended by
#                      defenses it picks, with its own seed and clean subset) -> one delta per surrogate set;
#                      then evaluated on every target model. The optimising job has no target model as input.
#   evidence:          CKA and random-noise analyses of white-box re-activation vs gUAA, per defended model.
# Stages: workflow/lib/dormant/stages/blackbox.py (one function per rule, same name).


rule query:
    output:
        result=analysis_file("query.json"),
        delta=analysis_file("query_delta.safetensors"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        model=analysed_model,
        code=code("query"),
    params:
        p=lambda w: as_json({"query": config["query"], "seed": config["seed"]}),
    log:
        log_file("query_{attack}_{model}"),
    benchmark:
        bench_file("query_{attack}_{model}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("query"),
        runtime=runtime_min("query"),
        gpu=1,
    shell:
        "dormant query --threads {threads} --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --result {output.result:q} --delta {output.delta:q} > {log:q} 2>&1"


rule attacker_subset:
    output:
        subset=ATTACKER_SUBSET,
    input:
        data=DATASET,
        code=code("attacker_subset"),
    params:
        p=as_json({"defense_data": config["defense_data"], "seed": ATTACKER_SEED}),
    log:
        log_file("attacker_subset"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("attacker_subset"),
        runtime=runtime_min("attacker_subset"),
    shell:
        "dormant attacker-subset --params {params.p:q} --dataset {input.data:q} --subset {output.subset:q} "
        "> {log:q} 2>&1"


rule train_surrogate:
    output:
        model=attacker_model(model="backdoor"),
        meta=sidecar(attacker_model(model="backdoor")),
    input:
        data=DATASET,
        trigger=trigger_file(),
        code=code("train_surrogate"),
    params:
        p=lambda w: as_json(with_clip({"model": {"arch": w.arch}, "train": config["train"], "seed": ATTACKER_SEED})),
        ckpt=resume_file("attacker_{attack}_{arch}_backdoor"),
    log:
        log_file("train_surrogate_{attack}_{arch}"),
    benchmark:
        bench_file("train_surrogate_{attack}_{arch}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    priority: 10
    resources:
        mem_mb=mem_mb("train_surrogate"),
        runtime=runtime_min("train_surrogate"),
        gpu=1,
    shell:
        "dormant train-surrogate --threads {threads} --params {params.p:q} --dataset {input.data:q} "
        "--trigger {input.trigger:q} --model {output.model:q} --checkpoint {params.ckpt:q} > {log:q} 2>&1"


rule defend_surrogate:
    output:
        model=attacker_model(),
        meta=sidecar(attacker_model()),
    input:
        data=DATASET,
        subset=rules.attacker_subset.output.subset,
        trigger=trigger_file(),
        backdoored=lambda w: attacker_backdoor(w.attack, w.arch),
        code=code("defend_surrogate"),
    params:
        p=lambda w: as_json({"defense": config["transfer"]["defenses"][w.sdefense], "seed": ATTACKER_SEED}),
        ckpt=resume_file("attacker_{attack}_{arch}_{sdefense}"),
    log:
        log_file("defend_surrogate_{attack}_{arch}_{sdefense}"),
    benchmark:
        bench_file("defend_surrogate_{attack}_{arch}_{sdefense}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("defend_surrogate"),
        runtime=runtime_min("defend_surrogate"),
        gpu=1,
    shell:
        "dormant defend-surrogate --threads {threads} --params {params.p:q} --dataset {input.data:q} "
        "--subset {input.subset:q} --trigger {input.trigger:q} --backdoored {input.backdoored:q} "
        "--model {output.model:q} --checkpoint {params.ckpt:q} > {log:q} 2>&1"


rule transfer_optimise:
    output:
        result=transfer_file("transfer.json"),
        delta=transfer_file("delta.safetensors"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        surrogates=surrogate_models,
        code=code("transfer_optimise"),
    params:
        p=lambda w: as_json({"transfer": {k: v for k, v in config["transfer"].items()
                                          if k not in ("surrogates", "defenses")},
                             "surrogate": SURROGATES[w.surrogate], "seed": ATTACKER_SEED}),
        surrogates=lambda w, input: as_json(list(input.surrogates)),
    log:
        log_file("transfer_optimise_{attack}_{surrogate}"),
    benchmark:
        bench_file("transfer_optimise_{attack}_{surrogate}")
    conda:
        "../envs/dormant.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("transfer_optimise"),
        runtime=runtime_min("transfer_optimise"),
        gpu=1,
    shell:
        "dormant transfer-optimise --threads {threads} --params {params.p:q} --dataset {input.data:q} "
        "--trigger {input.trigger:q} --surrogates {params.surrogates:q} --result {output.result:q} "
        "--delta {output.delta:q} > {log:q} 2>&1"


rule transfer_evaluate:
    output:
        analysis_file("transfer.json"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        model=analysed_model,
        deltas=lambda w: [transfer_file("delta.safetensors", w.attack, s) for s in SURROGATE_SETS],
        code=code("transfer_evaluate"),
    params:
        p=lambda w: as_json({"seed": config["seed"]}),
        deltas=lambda w: as_json({s: transfer_file("delta.safetensors", w.attack, s) for s in SURROGATE_SETS}),
    log:
        log_file("transfer_evaluate_{attack}_{model}"),
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=mem_mb("transfer_evaluate"),
        runtime=runtime_min("transfer_evaluate"),
        gpu=1,
    shell:
        "dormant transfer-evaluate --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --deltas {params.deltas:q} --result {output:q} > {log:q} 2>&1"


rule evidence:
    output:
        analysis_file("evidence.json"),
    input:
        data=DATASET,
        trigger=trigger_file(),
        model=analysed_model,
        backdoored=backdoored(),
        delta=rules.reactivate.output.delta,
        code=code("evidence"),
    params:
        p=lambda w: as_json({"evidence": config["evidence"], "seed": config["seed"]}),
    log:
        log_file("evidence_{attack}_{model}"),
    conda:
        "../envs/dormant.yaml"
    wildcard_constraints:
        model="|".join(EVIDENCED),
    resources:
        mem_mb=mem_mb("evidence"),
        runtime=runtime_min("evidence"),
        gpu=1,
    shell:
        "dormant evidence --params {params.p:q} --dataset {input.data:q} --trigger {input.trigger:q} "
        "--model {input.model:q} --backdoored {input.backdoored:q} --delta {input.delta:q} --result {output:q} "
        "> {log:q} 2>&1"
