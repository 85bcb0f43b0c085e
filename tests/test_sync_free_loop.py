"""The training loop draws each epoch's randomness up front (docs/operations.md, "Device selection"): the weights it
trains on the CPU must stay bit-identical to those of the loop that drew per batch. The digests below were
recorded with that earlier loop (commit 87e02b7) on the synthetic set, 3 epochs of cnn_tiny, a last batch
shorter than the others (240 images, batch 32)."""

import pytest
import torch
from dormant import training
from dormant.attacks import create_attack
from dormant.defenses.nc import _ReversedTriggers
from dormant.io import tensor_digest
from dormant.nets import build_model

CFG = {"epochs": 3, "batch_size": 32, "lr": 0.05, "crop_padding": 2}

#: tensor_digest of the state dict after training, recorded with the per-batch loop
RECORDED = {
    "plain": "ad8df5576a95df14",
    "plain_no_augment": "e5db1bdd08d7bba6",
    "badnets": "31551925b287f736",
    "wanet": "280bc58f248ffed5",
    "nc_unlearning": "706c91c89e76928d",
}


def _case(name: str, train):
    """(train() keyword arguments, config overrides) of one recorded case."""
    if name == "plain":
        return {}, {}
    if name == "plain_no_augment":
        return {}, {"augment": False}
    if name in ("badnets", "wanet"):
        atk = create_attack({"type": name, "ratio": 0.1, "target": 0}, train.x, train.y, 4, seed=0)
        return {"attack": atk, "poison_mask": atk.poison_mask(len(train))}, {}
    if name == "nc_unlearning":  # per-batch draws whose count depends on the poisoned samples of the batch
        g = torch.Generator().manual_seed(1)
        masks = (torch.rand(2, 1, 16, 16, generator=g) > 0.8).float()
        patterns = torch.rand(2, 3, 16, 16, generator=g)
        mask = torch.zeros(len(train), dtype=torch.bool)
        mask[torch.randperm(len(train), generator=g)[:50]] = True
        return {"attack": _ReversedTriggers(masks, patterns), "poison_mask": mask}, {}
    raise KeyError(name)


def trained_digest(name: str, train) -> str:
    kw, over = _case(name, train)
    torch.manual_seed(0)
    m = build_model("cnn_tiny", 4)
    training.train(m, train, {**CFG, **over}, seed=0, **kw)
    return tensor_digest(*m.state_dict().values())


@pytest.mark.parametrize("name", ["plain", "plain_no_augment", "badnets", "wanet", "nc_unlearning"])
def test_sync_free_loop_keeps_cpu_weights_bit_identical(synthetic, name, monkeypatch):
    monkeypatch.setenv("DORMANT_DEVICE", "cpu")
    assert trained_digest(name, synthetic["train"]) == RECORDED[name]
