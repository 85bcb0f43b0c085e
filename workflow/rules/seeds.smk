# Several run seeds (`seeds: [0, 1, 2]`): the pipeline of workflow/rules/pipeline.smk once per seed, as a Snakemake
# module whose config is this one with `seed` set; its rules are renamed seed<s>_<rule> and write under
# results/<name>/seed-<s>/ (and logs/, benchmarks/, resume/ likewise). Each seed's jobs depend only on that seed's
# files, so adding a seed runs its jobs and the tables over seeds, nothing else. Then the per-seed and aggregated
# tables (mean, std, n) and figures with error bars: results/<name>/report/seeds/ (dormant.report.seeds).
import json

from dormant.codedeps import code_files as _code_files
from dormant.config import validate as _validate
from dormant.configguard import fail as _fail
from dormant.errors import ConfigError as _ConfigError
from dormant import plan as _plan

try:  # once, before any module: every seed's config differs only in `seed`
    _validate(config, f"config ({globals().get('CONFIG_SOURCES', 'params.yaml + --configfile/--config')})")
except _ConfigError as _e:
    _fail(str(_e))

SEEDS = sorted(config["seeds"])
code = _code_files  # a stage's library files (dormant.codedeps), as common.smk derives them per seed

for _s in SEEDS:  # what `module seed<s>: ...` + `use rule * from seed<s> as seed<s>_*` compile to, per seed
    workflow.module(name=f"seed{_s}", snakefile="pipeline.smk", config={**config, "seed": _s})
    workflow.userule(rules=["*"], from_module=f"seed{_s}", exclude_rules=[], name_modifier=f"seed{_s}_*",
                     lineno=1)(lambda: None)

SEEDS_DIR = f"results/{config['name']}/report/seeds"
SEED_TABLES = {s: getattr(rules, f"seed{s}_report").output.csv for s in SEEDS}
SEED_BLACKBOX = {s: getattr(rules, f"seed{s}_report_blackbox").output.summary_csv for s in SEEDS}
SEEDS_FILES = {
    "table_seeds_csv": f"{SEEDS_DIR}/table_seeds.csv",
    "table_csv": f"{SEEDS_DIR}/table.csv",
    "table_md": f"{SEEDS_DIR}/table.md",
    "blackbox_seeds_csv": f"{SEEDS_DIR}/blackbox_seeds.csv",
    "blackbox_csv": f"{SEEDS_DIR}/blackbox.csv",
    "fig_asr": f"{SEEDS_DIR}/asr.png",
    "fig_bec": f"{SEEDS_DIR}/bec_vs_asr.png",
}
paper_files = globals()[f"seed{SEEDS[0]}"].paper_files  # common.smk's, as every seed's module has it
SEEDS_PAPER = paper_files(SEEDS_FILES)  # each table also as LaTeX, each figure as PDF


rule report_seeds:
    localrule: True
    output:
        **SEEDS_FILES,
        paper=SEEDS_PAPER,
    input:
        tables=list(SEED_TABLES.values()),
        blackbox=list(SEED_BLACKBOX.values()),
        code=code("report_seeds"),
    params:
        p=json.dumps({"seeds": SEEDS}),
        tables=json.dumps({str(s): p for s, p in SEED_TABLES.items()}),
        blackbox=json.dumps({str(s): p for s, p in SEED_BLACKBOX.items()}),
    log:
        f"logs/{config['name']}/report_seeds.log",
    conda:
        "../envs/dormant.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: _plan.mem_mb("report_seeds", config, attempt),
        runtime=lambda wildcards, attempt: _plan.runtime_min("report_seeds", {}, config, attempt),
    shell:
        "dormant report-seeds --params {params.p:q} --tables {params.tables:q} --blackbox {params.blackbox:q} "
        + " ".join(f"--{k.replace('_', '-')} {{output.{k}:q}}" for k in SEEDS_FILES)
        + " > {log:q} 2>&1"

# Every seed's report (its module's REPORT_FILES) and the tables over seeds: the Snakefile's `all`.
TARGETS = [f for s in SEEDS for f in globals()[f"seed{s}"].REPORT_FILES] + list(SEEDS_FILES.values()) + SEEDS_PAPER
