import pytest
import torch
from dormant.attacks import build_attack
from dormant.nets import build_model
from dormant.reactivation.delta import project, random_init, reactivation_loss
from dormant.reactivation.whitebox import optimise_universal, run_reactivation


def test_projection_linf_and_l2():
    d = torch.tensor([[-0.3, 0.01], [0.2, 0.04]])
    assert torch.equal(project(d, "linf", 0.05), torch.tensor([[-0.05, 0.01], [0.05, 0.04]]))
    p = project(d, "l2", 0.1)
    assert p.norm() == pytest.approx(0.1, rel=1e-6)
    assert torch.allclose(p / p.norm(), d / d.norm())
    small = torch.tensor([0.01, 0.02])
    assert torch.equal(project(small, "l2", 0.1), small)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_init_inside_budget(norm):
    d = random_init((3, 8, 8), norm, 0.05, torch.Generator().manual_seed(0))
    size = d.abs().max() if norm == "linf" else d.norm()
    assert 0 < size <= 0.05 + 1e-7


def test_loss_is_ce_plus_competing_class_term():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    p = logits.softmax(1)
    ce = -torch.log(p[:, 0]).mean()
    comp = -torch.log(1.0001 - torch.stack([p[0, 1], p[1, 1]])).mean()
    assert reactivation_loss(logits, 0).item() == pytest.approx((ce + comp).item(), rel=1e-6)


def _tiny_setup(synthetic):
    torch.manual_seed(0)
    m = build_model("cnn_tiny", 4)
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0}, (3, 16, 16), 4)
    return m, atk


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_delta_within_budget(synthetic, norm, eps):
    m, atk = _tiny_setup(synthetic)
    delta, losses = optimise_universal(m, synthetic["train"].x[:40], 0, transform=atk.apply, norm=norm, eps=eps,
                                       lr=1.0, epochs=2, steps=3, batch_size=16, seed=0)
    size = delta.abs().max() if norm == "linf" else delta.norm()
    assert size <= eps + 1e-6 and len(losses) == 2
    assert all(p.requires_grad for p in m.parameters())  # model handed back trainable


@pytest.mark.parametrize("with_trigger", [True, False])  # re-activation (trigger + delta) and gUAA
def test_optimisation_lowers_the_loss(synthetic, with_trigger):
    m, atk = _tiny_setup(synthetic)
    _, losses = optimise_universal(m, synthetic["train"].x[:64], 0, transform=atk.apply if with_trigger else None,
                                   eps=0.3, lr=0.05, epochs=6, steps=5, batch_size=32, seed=0)
    assert losses[-1] < losses[0]


def test_zero_budget_leaves_asr_unchanged(synthetic):
    m, atk = _tiny_setup(synthetic)
    cfg = {"norm": "linf", "eps": 0.0, "lr": 0.05, "epochs": 1, "steps": 2, "batch_size": 16, "n_images": 32}
    res, deltas = run_reactivation(m, synthetic["train"], synthetic["test"], atk, cfg, seed=0)
    assert torch.all(deltas["delta_reactivated"] == 0) and torch.all(deltas["delta_guaa"] == 0)
    assert res["asr_reactivated"] == res["asr_trigger"]
    assert res["asr_guaa"] == res["asr_clean"]


def test_epoch_losses_are_the_means_of_the_step_losses():
    """optimise_delta sums the step losses on the device (no per-step sync); the per-epoch figures equal the
    means of the losses the objective returned, summed as Python floats (bit for bit)."""
    from dormant.reactivation.delta import optimise_delta

    seen = []
    w = torch.linspace(-1, 1, 3 * 4 * 4).view(3, 4, 4)

    def objective(z):
        loss = ((z - 0.3) * w).square().mean()
        seen.append(float(loss.detach()))
        return loss

    x = torch.randint(0, 256, (10, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    _, losses = optimise_delta(objective, x, device="cpu", norm="l2", eps=0.5, lr=0.3, epochs=3, steps=2,
                               batch_size=4, seed=0)
    per_epoch = len(seen) // 3  # 3 batches x 2 steps
    want = []
    for e in range(3):
        tot = 0.0
        for v in seen[e * per_epoch : (e + 1) * per_epoch]:
            tot += v
        want.append(tot / per_epoch)
    assert per_epoch == 6 and losses == want
