"""The model-introspection helper, the held-out split, and the FP, NAD and CLP defenses (methods.md
section 5), on the synthetic data."""

import copy

import pytest
import torch
from dormant import introspect
from dormant.defenses import build_defense
from dormant.defenses.clp import channel_lipschitz
from dormant.defenses.holdout import split_holdout
from dormant.metrics import evaluate
from dormant.models import MODELS, build_model


def _same(a, b):
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


@pytest.fixture(scope="module")
def clean(synthetic):
    """The defender's clean data: 20% of the (clean) training set, stratified."""
    _, part = split_holdout(synthetic["train"], 0.2, seed=7)
    return part


@pytest.mark.parametrize("arch", MODELS.names())
def test_introspection_finds_conv_bn_pairs_and_stage_outputs_on_every_model(arch):
    net = build_model(arch, 10)
    pairs = introspect.conv_bn_pairs(net)
    assert pairs
    for conv, bn in pairs:
        assert net.get_submodule(conv).out_channels == net.get_submodule(bn).num_features
    points = introspect.attention_points(net)
    assert len(points) == 2
    # the inputs of those modules are 4-D feature maps, the deeper one smaller
    seen = {}
    hooks = [net.get_submodule(p).register_forward_pre_hook(lambda m, i, p=p: seen.__setitem__(p, i[0].shape))
             for p in points]
    net.eval()(torch.rand(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert all(len(seen[p]) == 4 for p in points) and seen[points[0]][-1] > seen[points[1]][-1]


def test_introspection_on_known_layouts():
    assert introspect.attention_points(build_model("preact_resnet18", 10)) == ["layer4", "avgpool"]
    assert introspect.attention_points(build_model("resnet18", 10)) == ["layer4", "pool"]
    assert introspect.attention_points(build_model("cnn_small", 10)) == ["block3", "pool"]
    pre = dict(introspect.conv_bn_pairs(build_model("preact_resnet18", 10)))
    assert pre["layer1.0.conv1"] == "layer1.0.bn2"  # pre-activation: conv1 feeds bn2
    assert "layer1.0.conv2" not in pre  # its output goes into the residual sum, not a BN
    assert len(introspect.conv_bn_pairs(build_model("resnet18", 10))) == 20  # every BN follows a conv
    assert len(introspect.bn_layers(build_model("vgg19_bn", 10))) == 16


def test_holdout_split_is_stratified_disjoint_and_seeded(synthetic):
    data = synthetic["train"]
    fit, held = split_holdout(data, 0.25, seed=1)
    assert len(fit) + len(held) == len(data)
    assert torch.bincount(held.y).tolist() == [15, 15, 15, 15]  # 60 per class
    rows = {tuple(r.flatten()[:32].tolist()) for r in held.x}
    assert not rows & {tuple(r.flatten()[:32].tolist()) for r in fit.x}
    again = split_holdout(data, 0.25, seed=1)[1]
    assert torch.equal(again.x, held.x)
    assert not torch.equal(split_holdout(data, 0.25, seed=2)[1].x, held.x)
    with pytest.raises(ValueError):
        split_holdout(data, 1.0, seed=0)


def test_clp_bound_and_pruning(clean):
    torch.manual_seed(0)
    net = build_model("cnn_small", 4)  # 32 stem channels (with 8, no single outlier can be 3 std out)
    conv, bn = net.stem[0], net.stem[1]
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.weight[3] = 50.0  # one channel with a huge Lipschitz bound
    ub = channel_lipschitz(conv, bn)
    w = conv.weight.detach()[3].reshape(3, -1)
    assert ub[3] == pytest.approx(float(torch.linalg.matrix_norm(w, 2) * 50 / (1 + bn.eps) ** 0.5), rel=1e-5)
    out, info = build_defense({"type": "clp", "u": 3.0}).run(copy.deepcopy(net), clean, seed=0)
    assert 3 in info["pruned"]["stem.1"] and info["changed"]
    pruned = out.stem[1]
    assert pruned.weight[3] == 0 and pruned.bias[3] == 0
    assert type(out) is type(net) and out.state_dict().keys() == net.state_dict().keys()
    # a threshold nothing exceeds: the model comes back unchanged, and says so
    same, info2 = build_defense({"type": "clp", "u": 1e9}).run(copy.deepcopy(net), clean, seed=0)
    assert not info2["changed"] and _same(same, net)
    # data-free: the result does not depend on the data it is handed
    other, _ = build_defense({"type": "clp", "u": 3.0}).run(copy.deepcopy(net), clean.subset(torch.arange(4)), seed=1)
    assert _same(other, out)


def test_fp_prunes_within_the_held_out_budget_and_keeps_pruned_channels_off(backdoored, clean):
    m, atk, _ = backdoored
    cfg = {"type": "fp", "epochs": 2, "batch_size": 16, "lr": 0.01, "step": 0.05, "max_acc_drop": 10.0,
           "holdout": 0.25}
    out, info = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    assert info["held_out_acc_before"] - info["held_out_acc_after_pruning"] < 10.0
    curve = info["prune_curve"]
    if curve and curve[-1]["pruned"] > info["pruned_channels"]:  # stopped by the budget, not by running out
        assert info["held_out_acc_before"] - curve[-1]["held_out_acc"] >= 10.0
    assert info["pruned_channels"] % 2 == 0  # steps of ceil(5% of 32) = 2 channels
    assert len(info["history"]) == 2 and info["n_held_out"] == 12
    w = introspect.head(out).weight
    assert int((w.abs().sum(0) == 0).sum()) == info["pruned_channels"]  # still off after fine-tuning
    again, _ = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    assert _same(again, out)
    none, info0 = build_defense({**cfg, "max_acc_drop": 0.0, "epochs": 0}).run(copy.deepcopy(m), clean, seed=0)
    assert info0["pruned_channels"] == 0 and _same(none, m)  # no accuracy may be lost: nothing pruned


def test_nad_keeps_architecture_and_budgets_is_deterministic_and_lowers_asr(backdoored, clean, synthetic):
    m, atk, _ = backdoored
    # the synthetic 16x16 images give 4x4 and 2x2 attention maps, on which the paper's betas (500, 1000, set for
    # 8x8 and 4x4 maps) swamp the cross-entropy (clean accuracy falls to 9%); a tenth of them keeps it
    cfg = {"type": "nad", "teacher_epochs": 5, "epochs": 5, "batch_size": 16, "lr": 0.01, "betas": [50.0, 100.0]}
    out, info = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    assert type(out) is type(m) and out.state_dict().keys() == m.state_dict().keys()
    assert len(info["history"]) == 5 and len(info["teacher_history"]) == 5
    assert info["layers"] == ["block3", "pool"]
    again, _ = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    assert _same(again, out)
    before = evaluate(m, synthetic["test"], atk)
    after = evaluate(out, synthetic["test"], atk)
    assert after["asr"] < before["asr"] - 10 and after["c_acc"] > 90, (before, after)


def test_nad_attention_loss_is_zero_between_identical_networks(backdoored, clean):
    """With beta > 0 but a teacher identical to the student (0 teacher epochs, lr ~ 0), the attention term
    is 0, so NAD is plain fine-tuning: same weights as FT with the same settings."""
    m, _, _ = backdoored
    nad, _ = build_defense({"type": "nad", "teacher_epochs": 0, "epochs": 1, "batch_size": 16, "lr": 1e-12,
                            "augment": False}).run(copy.deepcopy(m), clean, seed=0)
    ft, _ = build_defense({"type": "ft", "epochs": 1, "batch_size": 16, "lr": 1e-12, "augment": False}).run(
        copy.deepcopy(m), clean, seed=0)
    sa, sb = nad.state_dict(), ft.state_dict()
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa)
