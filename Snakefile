# Dormant-backdoor pipeline: poisoned data -> backdoored and clean models -> defended models
#   -> metrics -> BEC -> re-activation -> tables and figures.
# The science lives in workflow/lib (package `dormant`); rules only wire artifacts together.
from snakemake.utils import min_version

min_version("9.0")

# Every config file is re-read strictly before Snakemake's configfile directive parses it (one line, exit 2, on
# a missing, binary or unparsable file, duplicate keys or YAML templating; docs/operations.md).
from dormant.configguard import check_workflow_configs

CONFIG_SOURCES = check_workflow_configs(workflow, "params.yaml")


configfile: "params.yaml"


# One seed: the pipeline's rules as they are. Several (`seeds: [...]`): the same rules once per seed, each under
# results/<name>/seed-<s>/, plus the tables over seeds (workflow/rules/seeds.smk).
if config.get("seeds"):

    include: "workflow/rules/seeds.smk"

else:

    include: "workflow/rules/pipeline.smk"

    TARGETS = REPORT_FILES


rule all:
    input:
        TARGETS,
    default_target: True


# The user's input paths (ImageNet, image-caption pairs, pretrained weights) are checked when a run starts, before
# its first job, never in a dry run (`snakemake -n` expands a preset without them): one line naming each missing
# path with its config key, exit 2 (dormant.userpaths).
onstart:
    from dormant.configguard import fail as _fail
    from dormant.userpaths import check_user_paths, missing_paths_message

    _missing = check_user_paths(config)
    if _missing:
        _fail(missing_paths_message(_missing, CONFIG_SOURCES))
