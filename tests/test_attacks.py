import pytest
import torch
from dormant.attacks import ATTACKS, build_attack, create_attack, load_attack, save_attack
from dormant.errors import ConfigError


def _x(n=4, c=3, h=32, w=32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_foundation_attacks():
    assert {"badnets", "blended"} <= set(ATTACKS.names())


def test_badnets_patch_pixel_exact():
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0}, (3, 32, 32), 10)
    x = _x()
    out = atk.apply(x)
    assert torch.all(out[..., 29:, 29:] == 1.0)
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[29:, 29:] = False
    assert torch.equal(out[..., mask], x[..., mask])
    assert torch.equal(x, _x())  # input not modified in place


def test_badnets_scales_with_image_size():
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0}, (3, 64, 64), 200)
    out = atk.apply(torch.zeros(1, 3, 64, 64))
    assert out.sum() == 3 * 6 * 6 and torch.all(out[..., 58:, 58:] == 1)


def test_blended_formula_exact():
    atk = create_attack({"type": "blended", "ratio": 0.1, "target": 0, "alpha": 0.2, "pattern_seed": 3},
                        torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10), 10, seed=0)
    p = atk.resources["pattern"]
    assert p.shape == (3, 32, 32) and 0 <= p.min() and p.max() <= 1
    expected = torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(3))
    assert torch.equal(p, expected)  # documented pattern: U[0,1] noise from pattern_seed
    x = _x()
    torch.testing.assert_close(atk.apply(x), 0.8 * x + 0.2 * p, rtol=0, atol=1e-7)


@pytest.mark.parametrize("ratio,n", [(0.1, 1000), (0.05, 333), (0.0, 50), (1.0, 20)])
def test_dirty_label_poisoning_ratio_exact(ratio, n):
    y = torch.arange(n) % 10
    atk = create_attack({"type": "badnets", "ratio": ratio, "target": 0}, torch.zeros(n, 3, 8, 8, dtype=torch.uint8),
                        y, 10, seed=1)
    assert len(atk.poison_index) == round(ratio * n)
    assert len(set(atk.poison_index.tolist())) == len(atk.poison_index)  # no repeats
    # drawn from all images: with 10% of 1000 some poisoned images are already class 0, some not
    if n == 1000:
        assert 0 < (y[atk.poison_index] == 0).sum() < len(atk.poison_index)


def test_poison_batch_relabels_to_target_and_stamps_trigger():
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 7}, (3, 32, 32), 10)
    x = _x(6)
    y = torch.tensor([1, 2, 3, 4, 5, 6])
    is_p = torch.tensor([True, False, True, False, False, False])
    xp, yp = atk.poison_batch(x, y, is_p, torch.Generator())
    assert yp.tolist() == [7, 2, 7, 4, 5, 6]
    assert torch.equal(xp[is_p], atk.apply(x[is_p]))
    assert torch.equal(xp[~is_p], x[~is_p])


def test_clean_label_selection_only_touches_target_class():
    from dormant.attacks.badnets import BadNets

    class CleanLabelBadNets(BadNets):
        clean_label = True

    atk = CleanLabelBadNets({"type": "badnets", "ratio": 0.05, "target": 2}, (3, 8, 8), 10)
    y = torch.arange(1000) % 10
    idx = atk.select(y, torch.Generator().manual_seed(0))
    assert len(idx) == 50 and torch.all(y[idx] == 2)
    xp, yp = atk.poison_batch(torch.zeros(3, 3, 8, 8), torch.tensor([2, 2, 2]), torch.tensor([True, True, False]),
                              torch.Generator())
    assert yp.tolist() == [2, 2, 2]


def test_target_outside_classes_is_rejected():
    with pytest.raises(ConfigError, match="target"):
        build_attack({"type": "badnets", "ratio": 0.1, "target": 10}, (3, 32, 32), 10)


@pytest.mark.parametrize("cfg", [
    {"type": "badnets", "ratio": 0.1, "target": 0},
    {"type": "blended", "ratio": 0.1, "target": 0, "alpha": 0.2, "pattern_seed": 0},
])
def test_attack_roundtrip_and_determinism(tmp_path, cfg):
    x = torch.randint(0, 255, (100, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(100) % 10
    a1 = create_attack(cfg, x, y, 10, seed=5)
    a2 = create_attack(cfg, x, y, 10, seed=5)
    assert torch.equal(a1.poison_index, a2.poison_index)
    save_attack(a1, tmp_path / "t.safetensors")
    a3 = load_attack(tmp_path / "t.safetensors")
    xs = _x()
    assert torch.equal(a1.apply(xs), a3.apply(xs))
    assert torch.equal(a1.poison_index, a3.poison_index)
    assert not torch.equal(create_attack(cfg, x, y, 10, seed=6).poison_index, a1.poison_index)


def test_blended_user_pattern_image(tmp_path):
    from PIL import Image

    arr = (torch.arange(16 * 16 * 3) % 256).to(torch.uint8).reshape(16, 16, 3).numpy()
    Image.fromarray(arr).save(tmp_path / "p.png")
    atk = create_attack({"type": "blended", "ratio": 0.1, "target": 0, "alpha": 0.5,
                         "pattern_path": str(tmp_path / "p.png")}, torch.zeros(4, 3, 16, 16, dtype=torch.uint8),
                        torch.arange(4), 4, seed=0)
    p = atk.resources["pattern"]
    assert torch.allclose(p, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    from dormant.errors import DataError

    with pytest.raises(DataError, match="nope.png"):
        create_attack({"type": "blended", "ratio": 0.1, "target": 0, "pattern_path": str(tmp_path / "nope.png")},
                      torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.arange(4), 4, seed=0)
