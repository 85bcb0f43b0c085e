import math

import pytest
import torch
from dormant.analysis.metrics import (
    attack_success_rate,
    clean_accuracy,
    defense_effectiveness_rate,
    evaluate,
    poisoned_test_index,
    robust_accuracy,
)


def test_accuracy_asr_ra_hand_computed():
    y = torch.tensor([0, 1, 2, 3, 1])
    pred = torch.tensor([0, 1, 0, 3, 2])
    assert clean_accuracy(pred, y) == pytest.approx(60.0)
    # poisoned set: non-target images only (target 0) -> labels [1, 2, 3, 1]
    idx = poisoned_test_index(y, 0)
    assert idx.tolist() == [1, 2, 3, 4]
    pred_p = torch.tensor([0, 0, 3, 1])
    assert attack_success_rate(pred_p, 0) == pytest.approx(50.0)
    assert robust_accuracy(pred_p, y[idx]) == pytest.approx(50.0)


def test_der_published_form():
    # ASR 95 -> 5 at accuracy 92 -> 90: (0.90 - 0.02 + 1) / 2 = 0.94
    assert defense_effectiveness_rate(92, 95, 90, 5) == pytest.approx(94.0)
    # accuracy gain is not rewarded, ASR increase is not punished below 50
    assert defense_effectiveness_rate(90, 50, 95, 60) == pytest.approx(50.0)
    # pure accuracy loss: (0 - 0.3 + 1) / 2
    assert defense_effectiveness_rate(90, 50, 60, 50) == pytest.approx(35.0)
    assert math.isnan(defense_effectiveness_rate(float("nan"), 1, 1, 1))


class _Const(torch.nn.Module):
    """Predicts class 0 when the bottom-right pixel is white, else the true class encoded in pixel (0, 0)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        cls = (x[:, 0, 0, 0] * 255).round().long()
        cls = torch.where(x[:, 0, -1, -1] > 0.99, torch.zeros_like(cls), cls)
        return torch.nn.functional.one_hot(cls, 4).float() + 0 * self.w


def test_evaluate_on_a_model_with_known_behaviour():
    from dormant.attacks import build_attack
    from dormant.data.imageset import ImageSet

    y = torch.tensor([0, 1, 2, 3, 3, 2])
    x = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    x[:, 0, 0, 0] = y.to(torch.uint8)
    # patch_size is given for 32x32 images and scales: 8 at 32 px -> a 2x2 patch at 8 px
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0, "patch_size": 8}, (3, 8, 8), 4)
    assert atk.side == 2
    m = evaluate(_Const(), ImageSet(x, y, list("abcd")), atk)
    assert m == {"c_acc": 100.0, "asr": 100.0, "ra": 0.0}
