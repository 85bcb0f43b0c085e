"""The attack zoo (docs/methods.md section 4): exact trigger formulas, WaNet's field, Input-Aware's mask budget and
joint learning, LF's low-frequency pattern, SSBA's sample-specific residual, TrojanNN's neurons, clean-label
selection, determinism and save/load for every attack, and image sizes other than 32x32."""

import math

import pytest
import torch
from dormant import training
from dormant.attacks import ATTACKS, build_attack, create_attack, load_attack, make_resources, save_attack
from dormant.attacks.input_aware import keep_top
from dormant.attacks.lf import low_frequency_share, lowpass
from dormant.attacks.trojannn import select_neurons
from dormant.attacks.wanet import identity_grid, warp
from dormant.data.sources import make_synthetic
from dormant.nets import build_model

BASE = {"ratio": 0.1, "target": 0}
# every attack with its quickest settings (resources: seconds on the CPU)
FAST = {
    "badnets": {},
    "blended": {},
    "sig": {},
    "wanet": {},
    "lf": {"epochs": 1, "n_images": 64, "batch_size": 32},
    "ssba": {"epochs": 1, "batch_size": 32, "width": 4},
    "input_aware": {"mask_epochs": 1, "batch_size": 32, "width": 4},
    "trojannn": {"steps": 20, "n_images": 64, "batch_size": 32},
}


def cfg_of(kind, **kw):
    return {"type": kind, **BASE, **FAST[kind], **kw}


@pytest.fixture(scope="module")
def clean_tiny(synthetic):
    torch.manual_seed(0)
    m = build_model("cnn_tiny", 4)
    training.train(m, synthetic["train"], {"epochs": 4, "batch_size": 32, "lr": 0.05, "augment": False}, seed=0)
    return m.eval()


def made(kind, data, clean=None, seed=0, **kw):
    cfg = cfg_of(kind, **kw)
    train = data["train"]
    res = None
    if build_attack(cfg, train.image_shape, train.num_classes).resource_stage:
        res, _ = make_resources(cfg, train, train.num_classes, seed, clean_model=clean)
    return create_attack(cfg, train.x, train.y, train.num_classes, seed, res)


def test_every_attack_of_the_paper_is_registered():
    assert set(FAST) == set(ATTACKS.names())


def test_sig_is_the_exact_sinusoid_and_clipped():
    atk = build_attack({"type": "sig", **BASE}, (3, 8, 12), 10)
    x = torch.full((2, 3, 8, 12), 0.5)
    x[1] = 0.95  # near the top: the positive half of the signal is clipped
    out = atk.apply(x)
    for j in range(12):
        s = 40 / 255 * math.sin(2 * math.pi * j * 6 / 12)
        assert torch.allclose(out[0, :, :, j], torch.tensor(0.5 + s), atol=1e-6)
        assert torch.allclose(out[1, :, :, j], torch.tensor(min(1.0, 0.95 + s)), atol=1e-6)


def test_clean_label_selection_only_touches_target_class_images_and_keeps_labels(synthetic):
    train = synthetic["train"]
    atk = create_attack({"type": "sig", "ratio": 0.1, "target": 2}, train.x, train.y, 4, seed=0)
    assert len(atk.poison_index) == round(0.1 * len(train))
    assert (train.y[atk.poison_index] == 2).all()
    x = train.x[:40].float() / 255
    is_p = torch.zeros(40, dtype=torch.bool)
    is_p[:10] = True
    xp, yp = atk.poison_batch(x, train.y[:40], is_p, torch.Generator())
    assert torch.equal(yp, train.y[:40])
    assert torch.equal(xp[10:], x[10:]) and not torch.equal(xp[:10], x[:10])
    released = atk.poisoned_trainset(train)
    assert torch.equal(released.y, train.y)
    changed = (released.x != train.x).flatten(1).any(1)
    assert set(torch.nonzero(changed).flatten().tolist()) <= set(atk.poison_index.tolist())


def test_wanet_is_identity_at_strength_zero_and_its_grid_comes_from_the_seed(synthetic):
    x = synthetic["test"].x[:4].float() / 255
    zero = build_attack({"type": "wanet", **BASE, "strength": 0.0}, (3, 16, 16), 4)
    zero.init_resources(None, torch.Generator())
    assert torch.allclose(zero.apply(x), x, atol=1e-5)
    assert torch.allclose(warp(x, identity_grid(16, 16)), x, atol=1e-5)

    def grid(seed):
        a = build_attack({"type": "wanet", **BASE, "grid_seed": seed}, (3, 16, 16), 4)
        a.init_resources(None, torch.Generator())
        return a.grid()

    assert torch.equal(grid(3), grid(3)) and not torch.equal(grid(3), grid(4))
    g = grid(3)
    assert g.abs().max() <= 1
    # k x k control points, normalised to mean |offset| 1, scaled by s / H: the field moves pixels by < 1 px
    shift = (g - identity_grid(16, 16)) * 16 / 2
    assert 0.05 < shift.abs().mean() < 1.0


def test_wanet_batch_has_rho_warped_relabelled_and_twice_as_many_noise_samples(synthetic):
    atk = build_attack({"type": "wanet", **BASE}, (3, 16, 16), 4)
    atk.init_resources(None, torch.Generator())
    x = synthetic["train"].x[:50].float() / 255
    y = torch.full((50,), 3)
    xp, yp = atk.poison_batch(x, y, torch.zeros(50, dtype=torch.bool), torch.Generator().manual_seed(0))
    n_bd, n_cross = atk.batch_counts(50)
    assert (n_bd, n_cross) == (5, 10)
    assert (yp[:5] == 0).all() and (yp[5:] == 3).all()
    assert torch.allclose(xp[:5], atk.apply(x[:5]))
    noise = xp[5:15]
    assert not torch.allclose(noise, x[5:15], atol=1e-3) and not torch.allclose(noise, atk.apply(x[5:15]), atol=1e-3)
    assert torch.equal(xp[15:], x[15:])


def test_input_aware_mask_density_is_a_hard_bound(synthetic):
    atk = made("input_aware", synthetic)
    _, h, w = synthetic["train"].image_shape
    assert atk.k == round(0.032 * h * w)
    x = synthetic["test"].x.float() / 255
    m = atk.mask(x)
    assert ((m > 0).flatten(1).sum(1) <= atk.k).all()
    changed = (atk.apply(x) != x).any(1).flatten(1).sum(1)
    assert (changed <= atk.k).all() and (changed > 0).any()
    r = torch.rand(5, 1, 4, 4)
    kept = keep_top(r, 3)
    assert ((kept > 0).flatten(1).sum(1) == 3).all()
    assert torch.equal(kept.flatten(1).sort(1).values[:, -3:], r.flatten(1).sort(1).values[:, -3:])


def test_input_aware_batch_and_joint_learning(synthetic):
    atk = made("input_aware", synthetic)
    x = synthetic["train"].x[:40].float() / 255
    y = torch.full((40,), 2)
    xp, yp = atk.poison_batch(x, y, torch.zeros(40, dtype=torch.bool), torch.Generator())
    assert (yp[:4] == 0).all() and (yp[4:] == 2).all()  # 10% backdoor, then 10% cross-trigger keep their label
    assert torch.allclose(xp[:4], atk.apply(x[:4]))
    assert not torch.allclose(xp[4:8], atk.apply(x[4:8])) and not torch.equal(xp[4:8], x[4:8])
    assert torch.equal(xp[8:], x[8:]) and atk.training_loss() is None  # not learning: no diversity loss

    g0 = {k: v.clone() for k, v in atk.G.state_dict().items()}
    m0 = {k: v.clone() for k, v in atk.M.state_dict().items()}
    net = build_model("cnn_tiny", 4)
    cfg = {"epochs": 1, "batch_size": 40, "lr": 0.05, "augment": False}
    training.train(net, synthetic["train"], cfg, seed=0, attack=atk)
    assert all(torch.equal(g0[k], v) for k, v in atk.G.state_dict().items())  # frozen unless asked to learn
    training.train(net, synthetic["train"], cfg, seed=0, attack=atk, learn_attack=True)
    assert any(not torch.equal(g0[k], v) for k, v in atk.G.state_dict().items())
    assert all(torch.equal(m0[k], v) for k, v in atk.M.state_dict().items())  # M stays as pretrained
    assert not atk.learning and not any(p.requires_grad for p in atk.G.parameters())


def test_input_aware_learning_resumes_from_the_checkpoint(synthetic, tmp_path):
    cfg = {"epochs": 2, "batch_size": 40, "lr": 0.05, "augment": False}
    full = made("input_aware", synthetic)
    torch.manual_seed(0)
    net = build_model("cnn_tiny", 4)
    training.train(net, synthetic["train"], cfg, seed=0, attack=full, learn_attack=True)

    # with a checkpoint: same result; a rerun resumes from it, generator (and its optimiser) included
    part = made("input_aware", synthetic)
    torch.manual_seed(0)
    net3 = build_model("cnn_tiny", 4)
    ck2 = tmp_path / "ck2.safetensors"
    training.train(net3, synthetic["train"], cfg, seed=0, attack=part, learn_attack=True, checkpoint=ck2)
    again = made("input_aware", synthetic)
    torch.manual_seed(0)
    net4 = build_model("cnn_tiny", 4)
    hist = training.train(net4, synthetic["train"], cfg, seed=0, attack=again, learn_attack=True, checkpoint=ck2)
    assert len(hist) == 2 and torch.equal(net4.linear.weight, net3.linear.weight)
    for a in (part, again):
        assert all(torch.equal(v, full.G.state_dict()[k]) for k, v in a.G.state_dict().items())


def test_lowpass_keeps_low_and_removes_high_frequencies():
    j = torch.arange(32, dtype=torch.float64)
    low = torch.cos(2 * math.pi * 2 * j / 32)[None, :].expand(32, -1)
    high = torch.cos(2 * math.pi * 10 * j / 32)[None, :].expand(32, -1)
    assert torch.allclose(lowpass(low, 4), low, atol=1e-9)
    assert lowpass(high, 4).abs().max() < 1e-9


def test_lf_pattern_is_low_frequency_in_range_and_moves_the_clean_model(synthetic, clean_tiny):
    atk = made("lf", synthetic, clean=clean_tiny, epochs=3, n_images=200, step=0.02)
    p = atk.resources["pattern"]
    assert p.min() >= 0 and p.max() <= 51 / 255 + 1e-7 and p.max() > 0
    assert low_frequency_share(p, 4) > 0.95
    x = synthetic["test"].x[synthetic["test"].y != 0].float() / 255
    with torch.no_grad():
        before = (clean_tiny(x).argmax(1) == 0).float().mean()
        after = (clean_tiny(atk.apply(x)).argmax(1) == 0).float().mean()
    assert after > before
    assert torch.allclose(atk.apply(x), (x + p).clamp(0, 1))


def test_ssba_residual_is_bounded_sample_specific_and_encodes_the_fixed_bits(synthetic):
    atk = made("ssba", synthetic, eps=0.05)
    x = synthetic["test"].x[:8].float() / 255
    r = atk.apply(x) - x
    assert r.abs().max() <= 0.05 + 1e-6 and r.abs().max() > 0
    interior = (x > 0.06) & (x < 0.94)  # unclipped pixels show the raw residual
    diff = ((r[0] - r[1]).abs() * interior[0] * interior[1]).max()
    assert diff > 1e-4  # another image, another residual
    assert atk.bits.shape == (100,) and set(atk.bits.unique().tolist()) <= {0.0, 1.0}
    other = build_attack(cfg_of("ssba", bit_seed=1), (3, 16, 16), 4)
    assert not torch.equal(other.bits, atk.bits)


def test_trojannn_picks_the_most_connected_neurons_and_only_paints_its_corner(synthetic, clean_tiny):
    lin = torch.nn.Linear(5, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, -3, 0, 0, 1], [0.1, 2, 0, 0, -1], [0.1, 0, 0, 0.5, 0.2]]))
    assert select_neurons(torch.nn.Sequential(lin), 2).tolist() == [1, 4]
    atk = made("trojannn", synthetic, clean=clean_tiny, patch_size=6, steps=60)
    side = 3  # 6 pixels at 32x32 -> 3 at 16x16
    x = synthetic["test"].x[:4].float() / 255
    out = atk.apply(x)
    assert torch.equal(out[..., :-side, :], x[..., :-side, :]) and torch.equal(out[..., :, :-side], x[..., :, :-side])
    assert torch.equal(out[0, :, -side:, -side:], atk.resources["trigger"][:, -side:, -side:])
    info = make_resources(cfg_of("trojannn", patch_size=6, steps=60), synthetic["train"], 4, 0,
                          clean_model=clean_tiny)[1]
    assert info["activation_trigger"] > info["activation_initial_trigger"]
    assert info["activation_trigger"] > info["activation_clean"]


@pytest.mark.parametrize("kind", sorted(FAST))
def test_every_trigger_is_deterministic_and_survives_save_and_load(kind, synthetic, clean_tiny, tmp_path):
    a = made(kind, synthetic, clean=clean_tiny)
    b = made(kind, synthetic, clean=clean_tiny)
    x = synthetic["test"].x[:6].float() / 255
    assert torch.equal(a.apply(x), b.apply(x)) and torch.equal(a.poison_index, b.poison_index)
    save_attack(a, tmp_path / "t.safetensors")
    c = load_attack(tmp_path / "t.safetensors")
    assert torch.equal(c.apply(x), a.apply(x)) and torch.equal(c.poison_index, a.poison_index)
    assert not torch.equal(a.apply(x), x)
    assert a.apply(x).min() >= 0 and a.apply(x).max() <= 1


@pytest.mark.parametrize("kind", sorted(FAST))
def test_every_attack_works_at_64x64_with_scaled_triggers(kind):
    data = make_synthetic(num_classes=3, train_per_class=12, test_per_class=4, image_size=64, seed=1)
    clean = build_model("cnn_tiny", 3).eval()
    atk = made(kind, data, clean=clean)
    x = data["test"].x.float() / 255
    out = atk.apply(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    if kind == "badnets":
        assert atk.side == 6 and torch.equal(out[..., -6:, -6:], torch.ones_like(out[..., -6:, -6:]))
    if kind == "trojannn":
        assert atk.side == 10
    if kind == "input_aware":
        assert atk.k == round(0.032 * 64 * 64)
    if kind == "sig":  # f periods across the width at any size
        j = torch.arange(64, dtype=torch.float64)
        assert torch.allclose(atk.signal.double(), 40 / 255 * torch.sin(2 * math.pi * j * 6 / 64), atol=1e-7)


def test_resource_attacks_say_what_they_need(synthetic):
    cfg = cfg_of("lf")
    with pytest.raises(ValueError, match="clean"):
        make_resources(cfg, synthetic["train"], 4, 0)
    with pytest.raises(ValueError, match="resource"):
        create_attack(cfg, synthetic["train"].x, synthetic["train"].y, 4, 0)


def test_wanet_field_is_built_once_per_noise_tensor():
    """grid() is cached on the noise tensor: the same field as the formula, rebuilt when the noise is replaced."""
    a = build_attack({"type": "wanet", **BASE}, (3, 16, 16), 4)
    a.init_resources(None, torch.Generator())
    g = a.grid()
    assert a.grid() is g
    assert torch.equal(g, (identity_grid(16, 16) + a.strength * a.resources["noise"] / 16).clamp(-1, 1))
    a.set_resources({"noise": torch.zeros_like(a.resources["noise"])})
    assert torch.equal(a.grid(), identity_grid(16, 16))
