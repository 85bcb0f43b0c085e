import copy
import os
from pathlib import Path

import pytest
import torch
import yaml
from dormant.data.sources import make_synthetic

REPO = Path(__file__).resolve().parents[1]
# The full CIFAR-10 JPEG archive of the real-data tests: $DORMANT_CIFAR10_ARCHIVE, else where CI lays it out
SHARED_ARCHIVE = Path(os.environ.get("DORMANT_CIFAR10_ARCHIVE")
                      or REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz")


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def synthetic():
    return make_synthetic(num_classes=4, train_per_class=60, test_per_class=20, image_size=16, seed=0)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def params():
    """A deep copy of the repo's params.yaml."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


@pytest.fixture
def tiny_params():
    return copy.deepcopy(yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text()))


def _backdoored(synthetic, arch: str):
    """A model of ``arch`` with a BadNets backdoor on the synthetic data, its attack and poisoned training set."""
    from dormant import training
    from dormant.attacks import create_attack
    from dormant.nets import build_model

    train = synthetic["train"]
    atk = create_attack({"type": "badnets", "ratio": 0.1, "target": 0}, train.x, train.y, 4, seed=0)
    torch.manual_seed(0)
    m = build_model(arch, 4)
    training.train(m, train, {"epochs": 10, "batch_size": 32, "lr": 0.05, "augment": False}, seed=0, attack=atk,
                   poison_mask=atk.poison_mask(len(train)))
    return m, atk, atk.poisoned_trainset(train)


@pytest.fixture(scope="session")
def backdoored(synthetic):
    """A cnn_tiny with a BadNets backdoor on the synthetic data, its attack and poisoned training set."""
    return _backdoored(synthetic, "cnn_tiny")


@pytest.fixture(scope="session")
def backdoored_small(synthetic):
    """The same with a cnn_small (480 BN neurons): ANP prunes neurons, which cnn_tiny has too few of to spare
    (pruning 5 of its 88 costs a quarter of the held-out accuracy)."""
    return _backdoored(synthetic, "cnn_small")
