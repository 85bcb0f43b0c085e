"""The model-introspection helper, the held-out split, and the FP, NAD and CLP defenses (docs/methods.md
section 5), on the synthetic data."""

import copy
import math

import pytest
import torch
from dormant.analysis.metrics import evaluate
from dormant.defenses import build_defense
from dormant.defenses.clp import channel_lipschitz
from dormant.defenses.holdout import split_holdout
from dormant.errors import ConfigError
from dormant.nets import MODELS, build_model
from dormant.nets import probe as introspect


def _same(a, b):
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


NC_CFG = {"type": "nc", "epochs_reverse": 20, "batch_size_reverse": 16, "patience": 2, "epochs": 5,
          "batch_size": 16, "holdout": 0.25}


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
    # BackdoorBench's pairing (CLP's default): only pairs of matching width; on the CIFAR models every BN
    order = introspect.module_order_pairs(net)
    assert all(net.get_submodule(c).out_channels == net.get_submodule(b).num_features for c, b in order)
    unpaired = introspect.unpaired_bns(net, order)
    assert unpaired == (["bn1"] if arch == "wrn28_2" else [])  # WRN's final BN is registered after the stem
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


def test_clp_pairings_on_preact_resnet18():
    """BackdoorBench pairs every BN with the last conv before it in module order (all 16 of PreAct-ResNet18);
    the direct pairing keeps only the 9 BNs a conv feeds (the stem's and every block's conv1)."""
    from dormant.defenses.clp import clp_pairs

    net = build_model("preact_resnet18", 10)
    bns = introspect.bn_layers(net)
    direct, order = dict(map(reversed, clp_pairs(net, "direct"))), dict(map(reversed, clp_pairs(net, "module_order")))
    assert len(bns) == 16 and sorted(order) == sorted(bns) and len(direct) == 9
    assert direct.items() <= order.items()  # where a conv feeds the BN, both pairings agree
    assert order["layer1.0.bn1"] == "conv1" and order["layer1.0.bn2"] == "layer1.0.conv1"
    assert order["layer1.1.bn1"] == "layer1.0.conv2"  # fed by a residual sum, scored with the last conv
    assert order["layer2.1.bn1"] == "layer2.0.shortcut"  # the 1x1 shortcut is registered after conv2
    assert order["layer3.0.bn1"] == "layer2.1.conv2"
    for pairing, n in (("module_order", 16), ("direct", 9)):
        _, info = build_defense({"type": "clp", "u": 3.0, "pairing": pairing}).run(copy.deepcopy(net), None, seed=0)
        assert info["pairs"] == n and info["pairing"] == pairing
        assert info["unpaired_bns"] == ([] if n == 16 else sorted(set(bns) - set(direct), key=bns.index))
        assert info["channels"] == sum(net.get_submodule(b).num_features for b in (order if n == 16 else direct))
    with pytest.raises(ConfigError, match="pairing"):
        build_defense({"type": "clp", "pairing": "graph"})


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


def test_asam_step_goes_out_and_comes_back_exactly():
    from dormant.defenses.ftsam import asam_perturbation

    torch.manual_seed(0)
    net = build_model("cnn_tiny", 4)
    net(torch.rand(4, 3, 16, 16)).sum().backward()
    before = copy.deepcopy(net.state_dict())
    restore = asam_perturbation(net, rho=2.0, eta=0.01)
    moved = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert moved  # the ascent step moved the weights ...
    # ... by e = rho T^2 g / ||T g||, whose adaptive norm || e / T || is rho (T = |w| + eta, 1 for biases)
    named = [(n, p) for n, p in net.named_parameters() if p.grad is not None]
    assert any(n.endswith("bias") for n, _ in named)
    e = [p.detach() - before[n] for n, p in named]
    t = [before[n].abs() + 0.01 if n.endswith("weight") else torch.ones_like(before[n]) for n, _ in named]
    ratio = torch.cat([(a / b).flatten() for a, b in zip(e, t)])
    assert ratio.norm() == pytest.approx(2.0, rel=1e-4)
    restore()
    assert all(torch.allclose(v, before[k], atol=1e-7) for k, v in net.state_dict().items())


def test_asam_ascent_matches_a_hand_computation():
    """Kwon et al. 2021: e = rho T^2 g / ||T g|| with T = |w| + eta on weights and T = 1 on biases."""
    from dormant.defenses.ftsam import asam_perturbation

    lin = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -2.0]], dtype=torch.float64))
        lin.bias.copy_(torch.tensor([0.3], dtype=torch.float64))
    lin.weight.grad = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    lin.bias.grad = torch.tensor([-2.0], dtype=torch.float64)
    asam_perturbation(lin, rho=2.0, eta=0.01)
    # T g = (0.51 * 1.0, 2.01 * 0.5, 1 * -2.0) = (0.51, 1.005, -2.0); ||T g|| = sqrt(5.270125)
    norm = 5.270125 ** 0.5
    w_expected = [0.5 + 2.0 * 0.51 * 0.51 / norm, -2.0 + 2.0 * 2.01 * 1.005 / norm]
    assert lin.weight.detach().flatten().tolist() == pytest.approx(w_expected, abs=1e-9)
    assert lin.bias.item() == pytest.approx(0.3 + 2.0 * -2.0 / norm, abs=1e-9)


@pytest.mark.parametrize("cfg", [
    {"type": "ftsam", "epochs": 5, "batch_size": 16, "lr": 0.01, "rho": 2.0},
    {"type": "fst", "epochs": 5, "batch_size": 16, "lr": 0.01, "alpha": 0.2},
])
def test_ftsam_and_fst_keep_architecture_and_budget_are_deterministic_and_lower_asr(backdoored, clean, synthetic,
                                                                                     cfg):
    m, atk, _ = backdoored
    out, info = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    assert type(out) is type(m) and out.state_dict().keys() == m.state_dict().keys()
    assert len(info["history"]) == 5
    again, _ = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    assert _same(again, out)
    before, after = evaluate(m, synthetic["test"], atk), evaluate(out, synthetic["test"], atk)
    assert after["asr"] < before["asr"] - 10 and after["c_acc"] > 80, (before, after)
    if cfg["type"] == "fst":  # the head keeps its norm and ends far from the backdoored one
        norms = [float(introspect.head(x).weight.detach().norm()) for x in (out, m)]
        assert norms[0] == pytest.approx(norms[1], rel=1e-5)
        assert info["head_cosine_to_original"] < 0.5


@pytest.mark.parametrize("cfg", [
    {"type": "clp", "u": 3.0},
    {"type": "fp", "epochs": 1, "batch_size": 16, "step": 0.1, "holdout": 0.25},
    {"type": "nad", "teacher_epochs": 1, "epochs": 1, "batch_size": 16, "betas": [5.0, 10.0]},
    {"type": "ftsam", "epochs": 1, "batch_size": 16},
    {"type": "fst", "epochs": 1, "batch_size": 16},
    {**NC_CFG, "epochs_reverse": 2, "epochs": 1},
    {"type": "anp", "iterations": 3, "batch_size": 16, "holdout": 0.25},
    {"type": "ibau", "rounds": 1, "batch_size": 16},
    {"type": "sau", "epochs": 1, "batch_size": 16},
])
def test_defended_model_saves_with_its_info_as_the_defend_stage_does(backdoored, clean, tmp_path, cfg):
    """What the defend stage does with a defense's result: a safetensors checkpoint whose JSON sidecar holds
    the defense's info, loadable into the same architecture."""
    from dormant.nets.checkpoint import load_model, save_model

    m, _, _ = backdoored
    out, info = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    path = tmp_path / "model.safetensors"
    save_model(out, path, arch="cnn_tiny", num_classes=4, config={"defense": cfg}, seed=0, **info)
    assert _same(load_model(path), out)
    assert (tmp_path / "model.json").is_file()


# --------------------------------------------------------------------------- NC, ANP, i-BAU, SAU


def test_nc_anomaly_index_by_hand():
    from dormant.defenses.nc import anomaly_index

    # median 6, absolute deviations 5 1 0 1 2 -> MAD 1 -> scaled 1.4826
    idx = anomaly_index(torch.tensor([1.0, 5.0, 6.0, 7.0, 8.0]))
    assert idx.tolist() == pytest.approx([5 / 1.4826, 1 / 1.4826, 0.0, -1 / 1.4826, -2 / 1.4826])
    # a zero MAD: only the labels off the median are infinitely anomalous, on their side
    assert anomaly_index(torch.tensor([1.0, 3.0, 3.0, 3.0, 9.0])).tolist() == [math.inf, 0.0, 0.0, 0.0, -math.inf]



def test_nc_flags_the_target_and_unlearns_with_true_labels(backdoored, clean, synthetic):
    m, atk, _ = backdoored
    out, info = build_defense(NC_CFG).run(copy.deepcopy(m), clean, seed=0)
    assert info["flagged"] == [0] and info["changed"] is True  # the BadNets target, and only it
    assert min(range(4), key=lambda t: info["mask_l1"][t]) == 0 and info["anomaly_index"][0] > 2
    assert all(info["reached_success"]) and len(info["history"]) == 5
    assert info["n_stamped"] == round(0.2 * len(clean)) and info["n_held_out"] == 12
    assert type(out) is type(m) and out.state_dict().keys() == m.state_dict().keys()
    again, _ = build_defense(NC_CFG).run(copy.deepcopy(m), clean, seed=0)
    assert _same(again, out)
    before, after = evaluate(m, synthetic["test"], atk), evaluate(out, synthetic["test"], atk)
    assert after["asr"] < before["asr"] - 10 and after["c_acc"] > 80, (before, after)


def test_nc_returns_the_model_unchanged_when_nothing_is_flagged(backdoored, clean):
    m, _, _ = backdoored
    out, info = build_defense({**NC_CFG, "threshold": 1e9}).run(copy.deepcopy(m), clean, seed=0)
    assert info["flagged"] == [] and info["changed"] is False and info["history"] == []
    assert _same(out, m)


def test_nc_reversed_trigger_stamp_formula():
    from dormant.defenses.nc import stamp

    x, p = torch.rand(2, 3, 4, 4), torch.rand(3, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, 1, 2] = 1.0
    mask[0, 3, 3] = 0.25
    out = stamp(x, mask, p)
    assert torch.equal(out[:, :, 0, 0], x[:, :, 0, 0])  # m = 0: the image
    assert torch.equal(out[:, :, 1, 2], p[:, 1, 2].expand(2, 3))  # m = 1: the pattern
    assert torch.allclose(out[:, :, 3, 3], 0.75 * x[:, :, 3, 3] + 0.25 * p[:, 3, 3])


def test_anp_hooks_are_the_identity_at_mask_one_and_pruning_at_mask_zero(backdoored_small):
    from dormant.defenses.anp import NeuronPerturbation, prune

    m, _, _ = backdoored_small
    net = copy.deepcopy(m).eval()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = net(x)
    names = introspect.bn_layers(net)
    pert = NeuronPerturbation(net, names)
    assert torch.allclose(net(x), ref, atol=1e-6)  # mask 1, no noise: the network itself
    with torch.no_grad():
        pert.mask[names[2]][[1, 5]] = 0.0
    masked = net(x)
    pert.close()
    pruned = copy.deepcopy(m).eval()
    n = prune(pruned, {names[2]: pert.mask[names[2]].detach()}, threshold=0.5)
    assert n == 2 and torch.allclose(pruned(x), masked, atol=1e-5)  # mask 0 = BN weight 0


def test_anp_prunes_within_the_held_out_budget_is_deterministic_and_lowers_asr(backdoored_small, clean, synthetic):
    m, atk, _ = backdoored_small
    cfg = {"type": "anp", "iterations": 250, "batch_size": 16, "holdout": 0.25, "max_acc_drop": 10.0}
    out, info = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    assert type(out) is type(m) and out.state_dict().keys() == m.state_dict().keys()
    assert info["held_out_acc_before"] - info["held_out_acc_after"] <= 10.0
    assert 0 < info["pruned_neurons"] <= 0.9 * info["neurons"] and info["threshold"] > 0
    zeros = sum(int((out.get_submodule(n).weight == 0).sum()) for n in introspect.bn_layers(out))
    assert zeros == info["pruned_neurons"]
    curve = info["threshold_curve"]
    if curve[-1]["threshold"] > info["threshold"]:  # stopped by the budget
        assert info["held_out_acc_before"] - curve[-1]["held_out_acc"] > 10.0
    lo, *_, hi = info["mask_quantiles"]
    assert 0.0 <= lo <= hi <= 1.0
    again, _ = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
    assert _same(again, out)
    before, after = evaluate(m, synthetic["test"], atk), evaluate(out, synthetic["test"], atk)
    assert after["asr"] < before["asr"] - 10 and after["c_acc"] > 80, (before, after)
    # no threshold to try: nothing is pruned and the model is unchanged
    same, info0 = build_defense({**cfg, "iterations": 2, "thresholds": []}).run(copy.deepcopy(m), clean, seed=0)
    assert info0["pruned_neurons"] == 0 and not info0["changed"] and _same(same, m)


def test_ibau_hypergradient_reduces_to_the_direct_gradient_without_fixed_point_steps(backdoored, clean):
    from dormant.data.augment import to_float
    from dormant.defenses.ibau import IBAU_DEFAULTS, hypergradient

    m, _, _ = backdoored
    net = copy.deepcopy(m).eval()
    params = [p for p in net.parameters()]
    x, y = to_float(clean.x[:8]), clean.y[:8]
    delta = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    pick = torch.tensor([0, 3])
    g0 = hypergradient(net, params, delta, x, y, pick, {**IBAU_DEFAULTS, "K": 0})
    patch = torch.zeros_like(x)
    patch[pick] = delta[0]
    direct = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x + patch), y), params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, direct))
    g5 = hypergradient(net, params, delta, x, y, pick, {**IBAU_DEFAULTS, "K": 5})
    assert any(not torch.allclose(a, b, atol=1e-8) for a, b in zip(g5, direct))  # the implicit term is there


def test_ibau_and_sau_keep_architecture_and_budget_are_deterministic_and_lower_asr(backdoored, clean, synthetic):
    m, atk, _ = backdoored
    before = evaluate(m, synthetic["test"], atk)
    for cfg, n in (({"type": "ibau", "rounds": 5, "batch_size": 16}, 5),
                   ({"type": "sau", "epochs": 5, "batch_size": 16}, 5)):
        out, info = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
        assert type(out) is type(m) and out.state_dict().keys() == m.state_dict().keys()
        assert len(info["history"]) == n and info["changed"]
        if cfg["type"] == "ibau":
            assert all(r["uap_l2"] <= 2.5 + 1e-5 for r in info["history"])
        again, _ = build_defense(cfg).run(copy.deepcopy(m), clean, seed=0)
        assert _same(again, out)
        after = evaluate(out, synthetic["test"], atk)
        assert after["asr"] < before["asr"] - 10 and after["c_acc"] > 80, (cfg, before, after)


def test_sau_shared_perturbation_respects_its_budget_and_js_divergence_basics(backdoored, clean):
    from dormant.data.augment import to_float
    from dormant.defenses.loop import frozen_copy
    from dormant.defenses.sau import SAU_DEFAULTS, js_divergence, shared_pgd

    m, _, _ = backdoored
    net = copy.deepcopy(m).eval()
    x, y = to_float(clean.x[:16]), clean.y[:16]
    pert = shared_pgd(net, frozen_copy(m), x, y, {**SAU_DEFAULTS, "eps": 0.1, "step": 0.05})
    assert pert.abs().max() <= 0.1 + 1e-7 and pert.shape == x.shape
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(js_divergence(a, a), torch.zeros(5), atol=1e-6)
    assert torch.allclose(js_divergence(a, b), js_divergence(b, a), atol=1e-6)
    assert bool((js_divergence(a, b) <= math.log(2) + 1e-6).all())
