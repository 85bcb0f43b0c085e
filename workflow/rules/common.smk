# Shared definitions: config validation, the static grid, paths, params helpers.
import json
import os
import sys

from dormant.attacks import ATTACKS as _ATTACK_TYPES
from dormant.codedeps import code_files as _code_files
from dormant.config import validate as _validate
from dormant.configguard import fail as _fail
from dormant.errors import ConfigError as _ConfigError
from dormant import plan as _plan
from dormant.runtime import runtime_env as _runtime_env

try:
    _validate(config, f"config ({globals().get('CONFIG_SOURCES', 'params.yaml + --configfile/--config')})")
except _ConfigError as _e:
    _fail(str(_e))

# With `seeds: [...]` this file runs once per seed (workflow/rules/seeds.smk), each under its own folder.
RUN = os.path.join(config["name"], f"seed-{config['seed']}") if config.get("seeds") else config["name"]
R = f"results/{RUN}"
LOGS = f"logs/{RUN}"
BENCH = f"benchmarks/{RUN}"
RESUME = f"resume/{RUN}"
ATTACKS = sorted(config["attacks"])
DEFENSES = sorted(config["defenses"])
MODELS = ["clean", "backdoor"] + DEFENSES  # one table row per (attack, model)
OBSERVED = ["clean", "backdoor"]  # models of PBE's observation stage
# The budget ablation (analysis.smk, budget): every defended model, once reactivation.budgets lists an eps.
BUDGET_POINTS = [(n, e) for n, eps in sorted((config["reactivation"].get("budgets") or {}).items()) for e in eps or []]
BUDGETED = DEFENSES if BUDGET_POINTS else []
envvars:
    "PATH",

# params.yaml `runtime` (determinism, checkpoint cadence): how jobs run, carried by the environment
os.environ.update(_runtime_env(config.get("runtime")))


# Jobs call the `dormant` command of the environment Snakemake itself runs in (also on SLURM nodes),
# without that path becoming a parameter that would rerun jobs when the checkout moves.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


wildcard_constraints:
    attack="|".join(ATTACKS),
    arch="|".join(sorted({s["arch"] for s in config["transfer"]["surrogates"].values()})),
    surrogate="|".join(sorted(config["transfer"]["surrogates"])),
    sdefense="|".join(sorted(config["transfer"]["defenses"])),
    defense="|".join(DEFENSES) if DEFENSES else "(?!x)x",
    model="|".join(MODELS),


# ---- resources: what each job asks of a cluster (dormant.plan; docs/operations.md "Right-sized jobs") -----------
# Host memory from the measured peak of the default run's jobs scaled to this config's dataset; runtime from the
# cost model's projection of this job's work (3x, plus 10 minutes); both doubled on a retry. Rules that run a
# network declare gpu=1: a local run on a GPU machine bounds them with `--resources gpu=N` (make run GPU_JOBS=N),
# a run without that bound (the CPU default) is unaffected.
def mem_mb(rule):
    return lambda wildcards, attempt: _plan.mem_mb(rule, config, attempt)


def runtime_min(rule):
    return lambda wildcards, attempt: _plan.runtime_min(rule, dict(wildcards.items()), config, attempt)


# Rules that run on the machine running Snakemake, never as a cluster job: prepare_data may download CIFAR-10
# (compute nodes often have no internet), and the reports only read small JSON/CSV files.
# Each of them says so itself (`localrule: True`), so that the per-seed copies of seeds.smk stay local too:
# prepare_data, report, report_blackbox, report_defenses, report_budget, leaderboard.


def paper_files(outputs):
    """The paper's copies of a report rule's outputs (dormant.report.common): each table's .csv as LaTeX (.tex),
    each figure's .png as PDF, written next to it by the same job."""
    paths = outputs.values() if isinstance(outputs, dict) else outputs
    sibling = {".csv": ".tex", ".png": ".pdf"}
    return [os.path.splitext(p)[0] + sibling[os.path.splitext(p)[1]] for p in paths
            if os.path.splitext(p)[1] in sibling]


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


CLIP = config.get("clip")  # the CLIP track (docs/methods.md section 9): its section goes to the stages it changes


def with_clip(params):
    """A stage's params plus the ``clip`` section on the CLIP track."""
    return {**params, "clip": CLIP} if CLIP is not None else params


def attack_type(attack):
    return config["attacks"][attack]["type"]


def attack_class(attack):
    return _ATTACK_TYPES.get(attack_type(attack))


def code(stage):
    """The library files rule ``stage`` runs (its stage function's imports, transitively, plus the modules of
    the attack and defense types of its job): derived by dormant.codedeps, never listed by hand."""

    def files(w):
        names = w.keys()
        attacks = ([attack_type(w.attack)] if "attack" in names else
                   sorted({a["type"] for a in config["attacks"].values()}) if stage == "report" else [])
        defenses = ([config["defenses"][w.defense]["type"]] if "defense" in names else
                    [config["transfer"]["defenses"][w.sdefense]["type"]] if "sdefense" in names else [])
        return _code_files(stage, attacks=attacks, defenses=defenses)

    return files


# ---- artifact paths: one definition per kind, used by every rule that writes or reads it ----------------
# Wildcards are passed as "{attack}" etc. where a rule's output is a pattern.
def sidecar(path):
    """The JSON sidecar of an artifact (model.safetensors -> model.json)."""
    return path.rsplit(".", 1)[0] + ".json"


DATASET = f"{R}/data/dataset.safetensors"
SUBSET = f"{R}/data/clean_subset.json"


def resource_file(attack="{attack}"):
    """An attack's resource (LF pattern, SSBA encoder, TrojanNN trigger, Input-Aware mask net)."""
    return f"{R}/attacks/{attack}/resource.safetensors"


def initial_trigger_file(attack="{attack}"):
    """An attack's trigger + poison index before training."""
    return f"{R}/attacks/{attack}/trigger.safetensors"


def trigger_file(attack="{attack}"):
    """The attack as it stands after training (what Input-Aware's generator learned): every later stage's trigger."""
    return f"{R}/models/{attack}/backdoor/trigger.safetensors"


def model_file(attack="{attack}", model="{model}"):
    """A victim model: the clean model (shared by every attack), the backdoored one, or a defended one."""
    if model == "clean":
        return f"{R}/models/clean/model.safetensors"
    return f"{R}/models/{attack}/{model}/model.safetensors"


CLEAN_MODEL = model_file(model="clean")
CLEAN_PATTERN = f"{R}/models/{{clean}}/model.safetensors"  # == CLEAN_MODEL for clean="clean" (train_clean, import_clean)


# ---- models trained elsewhere (docs/operations.md): exactly one rule makes each model file ----------------------
# train_clean / import_clean, train_backdoor / import_backdoor and defend / import_defense produce the same files;
# rule-level wildcard constraints give each file to one of the pair (NEVER matches nothing).
NEVER = "(?!x)x"
CLEAN_IMPORT = config["model"].get("import")
IMPORTED_ATTACKS = sorted(a for a, e in config["attacks"].items() if e.get("import"))
IMPORTED_DEFENSES = sorted(d for d, e in config["defenses"].items() if e["type"] == "imported")


def one_of(names):
    return "|".join(names) if names else NEVER


def user_file(path):
    """A user path of the config (~ expanded; relative to the working directory)."""
    return os.path.expanduser(str(path))


def backdoored(attack="{attack}"):
    return model_file(attack, "backdoor")


def analysis_file(kind, attack="{attack}", model="{model}"):
    """A per-(attack, model) analysis result, e.g. analysis_file("bec.json")."""
    return f"{R}/analysis/{attack}/{model}/{kind}"


def analysed_model(w):
    return model_file(w.attack, w.model)


def role(w):
    return w.model if w.model in ("clean", "backdoor") else "defense"


def report_file(name):
    return f"{R}/report/{name}"


def log_file(name):
    return f"{LOGS}/{name}.log"


def bench_file(name):
    return f"{BENCH}/{name}.tsv"


def resume_file(name):
    return f"{RESUME}/{name}.safetensors"


# Black-box re-activation (blackbox.smk): the attacker's artifacts and its surrogate sets.
ATTACKER = f"{R}/attacker"
SURROGATES = config["transfer"]["surrogates"]
SURROGATE_SETS = sorted(SURROGATES)
ATTACKER_SEED = config["seed"] + config["transfer"]["seed_offset"]
EVIDENCED = MODELS[1:]  # the backdoored model (reference) and the defended models


ATTACKER_SUBSET = f"{ATTACKER}/clean_subset.json"


def attacker_model(attack="{attack}", arch="{arch}", model="{sdefense}"):
    """One of the attacker's own models: its backdoored model of ``arch`` or a defense of it."""
    return f"{ATTACKER}/{attack}/{arch}/{model}/model.safetensors"


def attacker_backdoor(attack, arch):
    """The attacker trained the victim's backdoored model itself; other architectures it trains anew."""
    if arch == config["model"]["arch"]:
        return backdoored(attack)
    return attacker_model(attack, arch, "backdoor")


def surrogate_models(w):
    s = SURROGATES[w.surrogate]
    return [attacker_model(w.attack, s["arch"], d) for d in s["defenses"]]


def transfer_file(kind, attack="{attack}", surrogate="{surrogate}"):
    """The transfer attack's delta or result of one surrogate set."""
    return f"{R}/transfer/{attack}/{surrogate}/{kind}"


def attacker_defense_types(surrogate):
    """The defense methods (types) a surrogate set used: a target made by one of them is not unseen."""
    return sorted({config["transfer"]["defenses"][d]["type"] for d in SURROGATES[surrogate]["defenses"]})
