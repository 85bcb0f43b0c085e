# The README's two commands: `make run` (set up + default pipeline) and `make test` (set up + tests).
PYTHON ?= python3.11
VENV   ?= .venv
CORES  ?= all
GPU_JOBS ?=            # on a GPU machine: at most this many network jobs at once (make run GPU_JOBS=2)
BIN    := $(VENV)/bin

PROFILE ?= profiles/slurm
ARCHIVE ?= data/cifar10-jpeg.tar.gz
PAPER  := --configfile config/paper.yaml --replace-workflow-config

.PHONY: setup run test lint dryrun-paper grid leaderboard attacks restore cluster paper-cluster dryrun-paper-cluster gpu-check clip \
        dryrun-clip-paper

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Snakemake's own command-line config loader reads every config file strictly first (docs/operations.md)
$(BIN)/.configguard: $(BIN)/.installed workflow/lib/dormant/configguard.py
	$(BIN)/python -m dormant.configguard --install
	touch $@

setup: $(BIN)/.installed $(BIN)/.configguard

run: setup
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete $(if $(strip $(GPU_JOBS)),--resources gpu=$(strip $(GPU_JOBS)))

test: setup
	$(BIN)/python -m pytest -q --durations=25

lint: setup
	$(BIN)/ruff check workflow/lib workflow/scripts tests
	$(BIN)/snakemake --lint

dryrun-paper: setup
	$(BIN)/snakemake -n --quiet rules $(PAPER)

# The CLIP track, tiny and offline (config/clip.yaml; docs/results.md "The CLIP track"): a small CLIP trained on the
# demo images with generated captions, BadNets and Blended, CleanCLIP and FT, every analysis; results/clip/report/.
clip: setup
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete --configfile config/clip.yaml --replace-workflow-config

# The CLIP paper preset's DAG (config/clip-paper.yaml): expands without its weights and data present.
dryrun-clip-paper: setup
	$(BIN)/snakemake -n --quiet rules --configfile config/clip-paper.yaml --replace-workflow-config

# The attack x defense grid on the CPU (config/grid.yaml; docs/benchmarks.md): defended models and their
# metrics only, then results/grid/report/defense_grid.{csv,md,png}.
grid: setup
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete --configfile config/grid.yaml -- results/grid/report/defense_grid.csv

# The dormancy leaderboard on the CPU (config/grid.yaml; docs/results.md "The dormancy leaderboard"): the grid's
# defended models, then BEC and the three re-activations of each, then results/grid/report/leaderboard.{csv,md,tex,
# png,pdf,html}. Estimated (not measured) at about 70 minutes on 2 cores (docs/results.md).
leaderboard: setup
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete --configfile config/grid.yaml -- results/grid/report/leaderboard.html

# The attack zoo on the CPU (config/attacks.yaml; docs/benchmarks.md): all eight attacks' backdoored models
# and their metrics, then results/attacks/report/attacks.{csv,md} and triggers.png.
attacks: setup
	$(BIN)/python workflow/scripts/benchmark_attacks.py --run --cores $(CORES)

# After a fresh clone: fetch the results of dvc.lock from the DVC remote and mark them current for
# Snakemake (see workflow/scripts/dvc_restore.sh).
restore: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" workflow/scripts/dvc_restore.sh

# On a SLURM cluster (edit profiles/slurm/config.yaml first). Rerunning either target after an edit of
# params.yaml or of the library resubmits only the jobs that it affects.
paper-cluster: setup   ## the whole paper preset, one command
	$(BIN)/snakemake --profile $(PROFILE) $(PAPER)

cluster: setup         ## params.yaml's pipeline, then record the results in dvc.lock (then: dvc push)
	$(BIN)/snakemake --profile $(PROFILE)
	$(BIN)/dvc commit -f

# The paper preset's plan on the cluster profile: jobs per rule, then SLURM submissions and GPU-hours (busy,
# held, requested) before and after grouping and right-sized runtimes (dormant plan; docs/operations.md).
dryrun-paper-cluster: setup
	$(BIN)/snakemake -n --quiet rules --profile $(PROFILE) $(PAPER)
	$(BIN)/dormant plan --profile $(PROFILE) --configfile config/paper.yaml --recorded docs/benchmarks/plan-paper-before.json

# The paper path on one GPU in at most 8 minutes (workflow/scripts/gpu_check.py; docs/benchmarks.md): figures in
# docs/benchmarks/gpu-check.{json,md}. `make gpu-check ARGS=--smoke`: tiny sizes on the CPU (CI).
gpu-check: setup
	$(BIN)/python workflow/scripts/gpu_check.py $(if $(filter --smoke,$(ARGS)),,--archive $(ARCHIVE)) $(ARGS)
