import math

import pytest
import torch
from dormant.analysis import bec
from dormant.analysis.cka import linear_cka
from dormant.errors import ConfigError
from dormant.nets import build_model


def _feat(n=60, d=20, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cka_identical_is_one():
    x = _feat()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling():
    x = _feat()
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    y = _feat(seed=2)
    ref = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(3.7 * x, y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x @ q * 0.01, x) == pytest.approx(1.0, abs=1e-10)


def test_cka_not_invariant_to_general_linear_maps_and_low_for_independent_features():
    x = _feat(n=200, d=5)
    a = torch.diag(torch.tensor([10.0, 1, 1, 1, 0.1], dtype=torch.float64))
    assert linear_cka(x @ a, x) < 0.99
    assert linear_cka(_feat(n=200, d=5, seed=3), x) < 0.2


def test_cka_matches_formula_with_explicit_centering_matrix():
    x, y = _feat(n=30, d=7), _feat(n=30, d=4, seed=5)
    n = 30
    h = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    k, lk = x @ x.T, y @ y.T

    def hs(a, b):
        return ((h @ a @ h) * (h @ b @ h)).sum()

    assert linear_cka(x, y) == pytest.approx((hs(k, lk) / torch.sqrt(hs(k, k) * hs(lk, lk))).item(), abs=1e-12)


def test_bec_formula():
    assert bec.bec_value(1.0, 0.4) == pytest.approx(1.0)
    assert bec.bec_value(0.4, 0.4) == pytest.approx(0.0)
    assert bec.bec_value(0.7, 0.4) == pytest.approx(0.5)
    assert math.isnan(bec.bec_value(0.5, 1.0))
    mm = bec.minmax_bec({"a": 0.2, "b": 0.6, "c": 0.4})
    assert mm == {"a": 0.0, "b": 1.0, "c": pytest.approx(0.5)}


def test_n_keep_and_ranking():
    assert bec.n_keep(64, 0.1) == 6 and bec.n_keep(8, 0.05) == 1 and bec.n_keep(512, 0.2) == 102
    # the reference keeps int(q * C); round(q * C) differs where the fraction part is >= 0.5
    assert bec.n_keep(64, 0.2) == 12 and bec.n_keep(64, 0.2, "round") == 13
    assert bec.n_keep(32, 0.05) == 1 and bec.n_keep(32, 0.05, "round") == 2
    assert bec.n_keep(70, 0.1) == 7 and bec.n_keep(100, 0.29) == 29  # float products just off an integer
    assert bec.n_keep(4, 0.05) == 1 and bec.n_keep(4, 0.05, "round") == 1  # at least one channel
    with pytest.raises(ConfigError, match="bec.channel_rounding"):
        bec.n_keep(64, 0.1, "ceil")
    r = bec.ranked_channels({"l": torch.tensor([0.1, 0.5, 0.3, 0.5])})
    assert r["l"].tolist() == [1, 3, 2, 0]


def test_bec_of_backdoored_is_one_and_of_clean_is_zero(synthetic):
    from dormant.attacks import build_attack

    torch.manual_seed(0)
    a = build_model("preact_resnet_tiny", 4).eval()
    c = build_model("preact_resnet_tiny", 4).eval()
    d = build_model("preact_resnet_tiny", 4).eval()
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0}, (3, 16, 16), 4)
    res = bec.compute_bec(a, c, {"backdoor": a, "clean": c, "other": d}, synthetic["test"], atk, n_images=40)
    assert res["layers"] == a.analysis_layers() and len(res["layers"]) == 6
    for q in ("0.05", "0.1", "0.2"):
        assert res["models"]["backdoor"][q]["bec"] == pytest.approx(1.0, abs=1e-9)
        assert res["models"]["clean"][q]["bec"] == pytest.approx(0.0, abs=1e-12)
        assert all(v == pytest.approx(1.0, abs=1e-9) for v in res["models"]["backdoor"][q]["layer_cka"].values())
        assert res["models"]["other"][q]["bec"] != pytest.approx(1.0, abs=1e-3)
    assert res["n_images"] == 40


def test_preact_resnet18_has_16_analysis_convs():
    m = build_model("preact_resnet18", 10)
    layers = m.analysis_layers()
    assert len(layers) == 16
    assert all(m.get_submodule(n).kernel_size == (3, 3) for n in layers)
    assert "conv1" not in layers and not any("shortcut" in n for n in layers)


class _Probe(torch.nn.Module):
    """One conv whose channel 2 alone sees the input; the others are dead."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[2] = 1.0
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))

    def analysis_layers(self):
        return ["conv"]


def test_tac_finds_the_channel_that_reacts_to_the_trigger(synthetic):
    from dormant.attacks import build_attack

    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0}, (3, 16, 16), 4)
    m = _Probe().eval()
    x = synthetic["test"].x[:8]
    tac = bec.trigger_activated_change(m, ["conv"], x, atk)["conv"]
    assert tac[2] > 0 and torch.all(tac[[0, 1, 3]] == 0)
    # hand-computed: the 2x2 white patch changes the 3x3 box sums around the corner
    from dormant.data.augment import to_float

    xf = to_float(x)
    d = torch.nn.functional.conv2d(atk.apply(xf) - xf, m.conv.weight[2:3], padding=1)
    assert tac[2].item() == pytest.approx(d.flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    assert bec.ranked_channels({"conv": tac})["conv"][0] == 2


def test_tac_ranks_on_its_own_images_and_cka_compares_on_a_nested_subset(synthetic):
    from dormant.attacks import build_attack

    torch.manual_seed(0)
    a, c = build_model("preact_resnet_tiny", 4).eval(), build_model("preact_resnet_tiny", 4).eval()
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0}, (3, 16, 16), 4)
    test = synthetic["test"]
    idx_tac, idx = bec.analysis_images(test, atk, 20, seed=3, n_tac=50)
    assert len(idx_tac) == 50 and len(idx) == 20 and set(idx.tolist()) <= set(idx_tac.tolist())
    assert (test.y[idx_tac] != 0).all()
    assert torch.equal(bec.analysis_images(test, atk, 20, seed=3)[1], idx)  # CKA images do not depend on n_tac
    res = bec.compute_bec(a, c, {"clean": c}, test, atk, n_images=20, tac_images=50, seed=3)
    assert res["n_images"] == 20 and res["tac_images"] == 50
    tac = bec.trigger_activated_change(a, a.analysis_layers(), test.x[idx_tac], atk)
    assert all(res["tac"][k] == pytest.approx(v.tolist(), rel=1e-12) for k, v in tac.items())
    # capped at the poisoned test set (60 non-target images); floor keeps int(q * C) channels
    res = bec.compute_bec(a, c, {"clean": c}, test, atk, n_images=20, tac_images=10**6, seed=3)
    assert res["tac_images"] == 60 and res["channel_rounding"] == "floor"
    widths = {n: a.get_submodule(n).out_channels for n in a.analysis_layers()}
    for q, kept in res["kept_channels"].items():
        assert kept == {n: max(1, int(float(q) * w)) for n, w in widths.items()}


def test_minmax_bec_normalises_over_the_clean_model_and_the_defenses(tmp_path):
    """The reference form: (S - min) / (max - min) over clean + defended rows of one attack (backdoored row
    excluded); with the clean model as the minimum it equals BEC / max BEC."""
    import json

    from dormant.report.table import build_table

    s_of = {"clean": 0.4, "backdoor": 1.0, "ft": 0.7, "nad": 0.55}
    rows = []
    for model, s in s_of.items():
        files = {}
        for kind, metrics in (("metrics", {"c_acc": 90.0, "asr": 5.0, "ra": 80.0, "der": 50.0}),
                              ("bec", {"bec": bec.bec_value(s, 0.4), "S": s}),
                              ("reactivation", {"asr_reactivated": 50.0, "asr_guaa": 5.0})):
            files[kind] = tmp_path / f"{model}_{kind}.json"
            files[kind].write_text(json.dumps({"metrics": metrics}))
        rows.append({"attack": "badnets", "model": model, **files})
    df = build_table(rows, {}).set_index("model")
    # hand computation: min 0.4 (clean), max 0.7 (ft)
    assert df.loc["clean", "bec_minmax"] == pytest.approx(0.0)
    assert df.loc["ft", "bec_minmax"] == pytest.approx(1.0)
    assert df.loc["nad", "bec_minmax"] == pytest.approx((0.55 - 0.4) / (0.7 - 0.4))
    assert df.loc["nad", "bec_minmax"] == pytest.approx(df.loc["nad", "bec"] / df.loc["ft", "bec"])
    assert math.isnan(df.loc["backdoor", "bec_minmax"])
