"""Integration on real CIFAR-10 (the full JPEG archive, tests/conftest.py SHARED_ARCHIVE): a backdoor is
implanted, FT weakens it, yet the backdoor's features survive (BEC well above 0) and a small universal
perturbation re-activates it far better than the same optimisation without the trigger (gUAA) -- the paper's
claims, at CPU scale."""

import pytest
import torch
from dormant import training
from dormant.analysis.bec import compute_bec
from dormant.analysis.metrics import evaluate
from dormant.attacks import create_attack
from dormant.data.sources import load_folder_or_archive
from dormant.defenses import build_defense
from dormant.nets import build_model
from dormant.reactivation.whitebox import run_reactivation

from .conftest import SHARED_ARCHIVE

pytestmark = [pytest.mark.realdata, pytest.mark.slow,
              pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason=f"no archive at {SHARED_ARCHIVE}")]

TRAIN = {"epochs": 6, "lr": 0.01, "augment": False}


@pytest.fixture(scope="module")
def cifar():
    return load_folder_or_archive(SHARED_ARCHIVE, train_per_class=400, test_per_class=100)


def test_backdoor_implanted_ft_lowers_asr_but_backdoor_stays(cifar):
    train, test = cifar["train"], cifar["test"]
    atk = create_attack({"type": "badnets", "ratio": 0.1, "target": 0}, train.x, train.y, 10, seed=0)
    torch.manual_seed(0)
    backdoored = build_model("cnn_small", 10)
    training.train(backdoored, train, TRAIN, seed=0, attack=atk, poison_mask=atk.poison_mask(len(train)))
    before = evaluate(backdoored, test, atk)
    assert before["asr"] > 80, before
    assert before["c_acc"] > 35, before  # chance is 10

    g = torch.Generator().manual_seed(0)
    clean_idx = torch.randperm(len(train), generator=g)[: int(0.05 * len(train))]
    defended = build_model("cnn_small", 10)
    defended.load_state_dict(backdoored.state_dict())
    defended, _ = build_defense({"type": "ft", "epochs": 20, "lr": 0.01}).run(defended, train.subset(clean_idx), seed=0)
    after = evaluate(defended, test, atk)
    assert after["asr"] < before["asr"] - 10, (before, after)
    assert after["c_acc"] > 25, after

    torch.manual_seed(0)
    clean = build_model("cnn_small", 10)
    training.train(clean, train, TRAIN, seed=0)
    res = compute_bec(backdoored, clean, {"ft": defended, "clean": clean}, test, atk, n_images=300)
    bec_ft = res["models"]["ft"]["0.1"]["bec"]
    assert res["models"]["clean"]["0.1"]["bec"] == pytest.approx(0.0, abs=1e-9)
    assert bec_ft > 0.25, res["models"]["ft"]["0.1"]

    cfg = {"norm": "linf", "eps": 0.05, "lr": 0.05, "epochs": 5, "steps": 5, "batch_size": 128, "n_images": 256}
    ra, _ = run_reactivation(defended, train, test, atk, cfg, seed=0)
    print(f"before {before}, after FT {after}, BEC(FT) {bec_ft:.3f}, re-activation {ra}")
    assert ra["asr_trigger"] == pytest.approx(after["asr"])
    assert ra["asr_reactivated"] > after["asr"] + 10, ra
    assert ra["asr_reactivated"] > ra["asr_guaa"] + 20, ra
