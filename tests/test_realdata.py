"""Integration on real CIFAR-10 (the JPEG archive in ../shared/datasets): a backdoor is implanted, FT weakens it."""

import pytest
import torch
from dormant import training
from dormant.attacks import create_attack
from dormant.data import load_folder_or_archive
from dormant.defenses import build_defense
from dormant.metrics import evaluate
from dormant.models import build_model

from .conftest import SHARED_ARCHIVE

pytestmark = [pytest.mark.realdata, pytest.mark.slow,
              pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason=f"no archive at {SHARED_ARCHIVE}")]


@pytest.fixture(scope="module")
def cifar():
    return load_folder_or_archive(SHARED_ARCHIVE, train_per_class=400, test_per_class=100)


def test_backdoor_implanted_then_ft_lowers_asr(cifar):
    train, test = cifar["train"], cifar["test"]
    atk = create_attack({"type": "badnets", "ratio": 0.1, "target": 0}, train.x, train.y, 10, seed=0)
    torch.manual_seed(0)
    model = build_model("cnn_small", 10)
    training.train(model, train, {"epochs": 6, "lr": 0.01, "augment": False}, seed=0, attack=atk,
                   poison_mask=atk.poison_mask(len(train)))
    before = evaluate(model, test, atk)
    assert before["asr"] > 80, before
    assert before["c_acc"] > 35, before  # chance is 10
    g = torch.Generator().manual_seed(0)
    clean_idx = torch.randperm(len(train), generator=g)[: int(0.05 * len(train))]
    ft = build_defense({"type": "ft", "epochs": 20, "lr": 0.01})
    model, _ = ft.run(model, train.subset(clean_idx), seed=0)
    after = evaluate(model, test, atk)
    assert after["asr"] < before["asr"] - 10, (before, after)
    assert after["c_acc"] > 25, after
