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


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/blackbox.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        REPORT_FILES,
    default_target: True
