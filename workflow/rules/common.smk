# Shared definitions: config validation, the static grid, paths, params helpers.
import json
import os
import sys

from dormant.config import validate as _validate
from dormant.attacks import ATTACKS as _ATTACK_TYPES
from dormant.defenses import DEFENSES as _DEFENSE_TYPES
from dormant.errors import ConfigError as _ConfigError

try:
    _validate(config, "config (params.yaml + --configfile/--config)")
except _ConfigError as _e:
    raise WorkflowError(str(_e))

R = f"results/{config['name']}"
LOGS = f"logs/{config['name']}"
BENCH = f"benchmarks/{config['name']}"
RESUME = f"resume/{config['name']}"
ATTACKS = sorted(config["attacks"])
DEFENSES = sorted(config["defenses"])
MODELS = ["clean", "backdoor"] + DEFENSES  # one table row per (attack, model)
OBSERVED = ["clean", "backdoor"]  # models of PBE's observation stage
envvars:
    "PATH",


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


def lib(*modules):
    """Library files a rule depends on, so that a change to them reruns it."""
    return [f"workflow/lib/dormant/{m}" for m in modules]


def defense_code(defense_type):
    """A defense's own module plus the library files it declares (``code_deps``)."""
    return lib(f"defenses/{defense_type}.py", *_DEFENSE_TYPES.get(defense_type).code_deps)


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def model_file(attack, model):
    if model == "clean":
        return f"{R}/models/clean/model.safetensors"
    return f"{R}/models/{attack}/{model}/model.safetensors"


DATASET = f"{R}/data/dataset.safetensors"
SUBSET = f"{R}/data/clean_subset.json"
CLEAN_MODEL = f"{R}/models/clean/model.safetensors"
# An attack's resource (LF pattern, SSBA encoder, TrojanNN trigger, Input-Aware mask net), then its
# trigger + poison index before training; training saves the attack as it stands after training (what
# Input-Aware's generator learned), and that file is the trigger of every later stage.
RESOURCE = f"{R}/attacks/{{attack}}/resource.safetensors"
INITIAL_TRIGGER = f"{R}/attacks/{{attack}}/trigger.safetensors"
TRIGGER = f"{R}/models/{{attack}}/backdoor/trigger.safetensors"


def attack_class(attack):
    return _ATTACK_TYPES.get(config["attacks"][attack]["type"])


def attack_code(attack):
    """The attack's own module plus the shared attack code."""
    return lib("attacks/__init__.py", "attacks/base.py", "attacks/nets.py",
               f"attacks/{config['attacks'][attack]['type']}.py")


def analysed_model(w):
    return model_file(w.attack, w.model)


def role(w):
    return w.model if w.model in ("clean", "backdoor") else "defense"


# Black-box re-activation (blackbox.smk): the attacker's artifacts and its surrogate sets.
ATTACKER = f"{R}/attacker"
SURROGATES = config["transfer"]["surrogates"]
SURROGATE_SETS = sorted(SURROGATES)
ATTACKER_SEED = config["seed"] + config["transfer"]["seed_offset"]
EVIDENCED = MODELS[1:]  # the backdoored model (reference) and the defended models


def attacker_backdoor(attack, arch):
    """The attacker trained the victim's backdoored model itself; other architectures it trains anew."""
    if arch == config["model"]["arch"]:
        return f"{R}/models/{attack}/backdoor/model.safetensors"
    return f"{ATTACKER}/{attack}/{arch}/backdoor/model.safetensors"


def surrogate_models(w):
    s = SURROGATES[w.surrogate]
    return [f"{ATTACKER}/{w.attack}/{s['arch']}/{d}/model.safetensors" for d in s["defenses"]]


def attacker_defense_types(surrogate):
    """The defense methods (types) a surrogate set used: a target made by one of them is not unseen."""
    return sorted({config["transfer"]["defenses"][d]["type"] for d in SURROGATES[surrogate]["defenses"]})
