# The pipeline of one seed: every stage's rules; REPORT_FILES (report.smk) is what it builds. The Snakefile includes
# it for a single `seed`; workflow/rules/seeds.smk loads it once per seed of `seeds`, as a module.
include: "common.smk"
include: "data.smk"
include: "models.smk"
include: "analysis.smk"
include: "blackbox.smk"
include: "report.smk"

