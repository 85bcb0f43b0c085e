"""The default run answers its question (README, docs/results.md): on the shipped demo images, the defenses
that ``params.yaml`` chooses bring both default backdoors' ASR low at a small cost in clean accuracy, so
that BEC and the re-activation attacks have defended models worth analysing. A change to a defense's code
or to a default that turned the demo back into "the defense did not work" fails here.

Reduced size: half of the demo's training images (500 per class), 100 test images per class; everything
else (model, training schedule, attacks, the defender's clean share, every defense's settings) is read from
``params.yaml`` as shipped, and run through the same library calls as the stages. The defenses that read
the poisoned training set instead of clean data (PBE) are the default run's counter-example and are left
out: the claim under test is the clean-data defenses'."""

from pathlib import Path

import pytest
import torch
from dormant import config, training
from dormant.analysis.metrics import evaluate
from dormant.attacks import create_attack
from dormant.data.sources import load_source
from dormant.data.subsets import stratified_subset
from dormant.defenses import build_defense
from dormant.nets import build_model

pytestmark = pytest.mark.slow

PARAMS = config.load(Path(__file__).resolve().parents[1] / "params.yaml")
CLEAN_DATA_DEFENSES = sorted(name for name, section in PARAMS["defenses"].items()
                             if build_defense(section).data_access == "clean_subset")
# The default run (twice the training images, a defender with twice the clean images) is judged by
# ASR < 20% at <= 10 points of C-ACC (README); at half size the model is weaker (about 54% C-ACC instead of
# 63%) and the bars are set accordingly, measured at ASR 17-30% with 0-5 points of cost (docs/results.md).
ASR_WEAK = 40.0   # every clean-data default defense at least halves the backdoored model's ASR (> 80%)
ASR_LOW = 25.0    # and two of them bring it near zero
MAX_COST = 10.0   # C-ACC points a defense may cost
TRAIN_PER_CLASS, TEST_PER_CLASS = 500, 100


@pytest.fixture(scope="module")
def demo():
    assert PARAMS["data"]["source"] == "demo", "the default run reads the shipped demo subset"
    sets = load_source({**PARAMS["data"], "train_per_class": TRAIN_PER_CLASS, "test_per_class": TEST_PER_CLASS})
    train = sets["train"]
    idx = stratified_subset(train.y, train.num_classes, PARAMS["defense_data"]["clean_ratio"], PARAMS["seed"])
    return train, sets["test"], train.subset(idx)


@pytest.mark.parametrize("attack", sorted(PARAMS["attacks"]))
def test_default_defenses_lower_asr_on_demo(demo, attack):
    train, test, clean = demo
    seed = PARAMS["seed"]
    atk = create_attack(PARAMS["attacks"][attack], train.x, train.y, train.num_classes, seed)
    torch.manual_seed(seed)
    backdoored = build_model(PARAMS["model"]["arch"], train.num_classes)
    training.train(backdoored, train, PARAMS["train"], seed=seed, attack=atk,
                   poison_mask=atk.poison_mask(len(train)))
    before = evaluate(backdoored, test, atk)
    assert before["asr"] > 80, before

    after = {}
    for name in CLEAN_DATA_DEFENSES:
        net = build_model(PARAMS["model"]["arch"], train.num_classes)
        net.load_state_dict(backdoored.state_dict())
        net, _ = build_defense(PARAMS["defenses"][name]).run(net, clean, seed=seed)
        after[name] = evaluate(net, test, atk)
    summary = {n: (round(m["c_acc"], 1), round(m["asr"], 1)) for n, m in after.items()}
    print(f"{attack}: backdoored C-ACC {before['c_acc']:.1f}, ASR {before['asr']:.1f}; (C-ACC, ASR) {summary}")

    for name, m in after.items():  # every clean-data default defense weakens the backdoor ...
        assert m["asr"] < ASR_WEAK, (name, before, m)
        assert m["c_acc"] >= before["c_acc"] - MAX_COST, (name, before, m)
    working = [n for n, m in after.items() if m["asr"] < ASR_LOW and m["c_acc"] >= before["c_acc"] - MAX_COST]
    assert len(working) >= 2, (attack, before, summary)  # ... and two of them drive it near zero
