"""PGD, adversarial fine-tuning (AFT), Progressive Backdoor Erasing (PBE) and PBE's observation."""

import pytest
import torch
from dormant.analysis.adversarial import pgd_untargeted
from dormant.analysis.metrics import predict
from dormant.analysis.observation import observe
from dormant.data.augment import to_float
from dormant.defenses import build_defense
from dormant.errors import ConfigError
from dormant.nets import build_model
from dormant.nets.probe import penultimate_features

EPS, STEP = 8 / 255, 2 / 255
PBE = {"type": "pbe", "rounds": 3, "init_fraction": 0.1, "keep_fractions": [0.3, 0.6], "epochs": 1,
       "batch_size": 32, "steps": 2}


def _model(num_classes=4, seed=0):
    torch.manual_seed(seed)
    return build_model("cnn_tiny", num_classes)


def _copy(m):
    c = _model()
    c.load_state_dict(m.state_dict())
    return c


def _same(a, b):
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_pgd_stays_in_budget_and_takes_exactly_the_configured_steps(synthetic):
    m = _model()
    x, y = to_float(synthetic["test"].x[:16]), synthetic["test"].y[:16]
    calls = []
    h = m.register_forward_hook(lambda *_: calls.append(1))
    adv = pgd_untargeted(m, x, y, eps=EPS, step=STEP, steps=3, generator=torch.Generator().manual_seed(0))
    h.remove()
    assert len(calls) == 3  # one forward (and backward) per step
    assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > EPS / 2  # it moved
    assert torch.equal(pgd_untargeted(m, x, y, eps=EPS, step=STEP, steps=0, random_start=False), x)
    assert torch.equal(pgd_untargeted(m, x, y, eps=0.0, step=STEP, steps=3), x)


def test_pgd_increases_the_loss_and_runs_the_model_in_eval_mode(synthetic):
    m = _model()
    m.train()
    bn_before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    x, y = to_float(synthetic["test"].x[:32]), synthetic["test"].y[:32]
    adv = pgd_untargeted(m, x, y, eps=EPS, step=STEP, steps=5, random_start=False)
    assert m.training  # mode restored
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in bn_before.items())  # BN statistics untouched
    m.eval()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy
        assert ce(m(adv), y) > ce(m(x), y)


def test_poisoned_trainset_is_the_released_poisoned_data(synthetic, backdoored):
    _, atk, pois = backdoored
    train = synthetic["train"]
    mask = atk.poison_mask(len(train))
    assert torch.equal(pois.x[~mask], train.x[~mask]) and torch.equal(pois.y[~mask], train.y[~mask])
    assert (pois.y[mask] == 0).all()
    expected = (atk.apply(to_float(train.x[mask])).clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(pois.x[mask], expected) and not torch.equal(pois.x[mask], train.x[mask])
    s = pois.x.shape[-1]  # BadNets on 16x16 images: the 3x3 patch at 32x32 scales to 2x2, bottom right, white
    assert (pois.x[mask][:, :, s - 2 :, s - 2 :] == 255).all()


def test_pbe_selection_grows_as_configured_and_never_depends_on_the_poison_index(backdoored):
    m, atk, pois = backdoored
    n = len(pois)
    truth = atk.poison_mask(n)
    fake = torch.zeros(n, dtype=torch.bool)
    fake[:50] = True

    def audit_of(mask):
        return lambda sel: {"precision": 100.0 * float((~mask[sel]).float().mean())}

    runs = {}
    for name, audit in (("none", None), ("truth", audit_of(truth)), ("fake", audit_of(fake))):
        model, info = build_defense(PBE).run(_copy(m), pois, seed=0, audit=audit)
        runs[name] = (model, info)
    assert _same(runs["none"][0], runs["truth"][0]) and _same(runs["none"][0], runs["fake"][0])
    rounds = runs["truth"][1]["rounds"]
    assert [r["selected"] for r in rounds] == [round(f * n) for f in (0.1, 0.3, 0.6)]
    assert [r["precision"] for r in rounds] != [r["precision"] for r in runs["fake"][1]["rounds"]]
    assert all(0 <= r["precision"] <= 100 for r in rounds)
    # the random first subset is independent of the attack's poison selection (both draw from the seed):
    # about (1 - ratio) of it is clean, not 0% as when it replayed the poison permutation
    assert rounds[0]["precision"] > 60
    # per-epoch history: 1 epoch per round, numbered across rounds, the round's record on its last epoch
    hist = runs["truth"][1]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and [h["round"] for h in hist] == [1, 2, 3]


def test_pbe_is_deterministic_for_a_seed(backdoored):
    m, _, pois = backdoored
    a, _ = build_defense(PBE).run(_copy(m), pois, seed=1)
    b, _ = build_defense(PBE).run(_copy(m), pois, seed=1)
    c, _ = build_defense(PBE).run(_copy(m), pois, seed=2)
    assert _same(a, b) and not _same(a, c)


def test_pbe_rejects_fractions_that_do_not_fit_the_rounds():
    with pytest.raises(ConfigError, match="defenses.pbe.keep_fractions"):
        build_defense({**PBE, "rounds": 4})
    with pytest.raises(ConfigError, match="must grow"):
        build_defense({**PBE, "keep_fractions": [0.3, 0.2]})


@pytest.mark.parametrize("schedule", ["official", "every_batch"])
def test_pbe_resumes_per_round_to_identical_weights(backdoored, tmp_path, schedule):
    m, _, pois = backdoored
    cfg = {**PBE, "epochs": 2, "adversarial_schedule": schedule}
    ref, _ = build_defense(cfg).run(_copy(m), pois, seed=0)
    ckpt = tmp_path / "pbe.safetensors"
    build_defense({**cfg, "rounds": 2, "keep_fractions": [0.3]}).run(_copy(m), pois, seed=0, checkpoint=ckpt)
    assert (tmp_path / "pbe.round1.safetensors").exists() and (tmp_path / "pbe.round2.safetensors").exists()
    # official: round 2's clean epochs resume from their own checkpoint, with the shared optimiser's buffers
    assert (tmp_path / "pbe.round2.clean.safetensors").exists() == (schedule == "official")
    resumed, _ = build_defense(cfg).run(_copy(m), pois, seed=0, checkpoint=ckpt)
    assert _same(ref, resumed)


@pytest.mark.parametrize("schedule,adversarial,optimisers", [
    ("official", [4, 3, 3], 1),  # round 1: 2 epochs x 2 batches; rounds 2-3: the first 3 batches only
    ("every_batch", [4, 10, 18], 3),  # every batch of 2 epochs of 2, 5 and 9 batches; a fresh SGD per round
])
def test_pbe_adversarial_batches_per_round(backdoored, monkeypatch, schedule, adversarial, optimisers):
    """A spy in place of PGD counts the adversarial batches of each round (subsets of 24, 72 and 144 of the 240
    images, batch 16: 2, 5 and 9 batches per epoch) and the optimisers created."""
    from dormant.defenses import aft

    m, _, pois = backdoored
    counts, sgd = [], []

    def spy_pgd(cfg):
        counts.append(0)
        k = len(counts) - 1

        def transform(model, x, y, generator):
            counts[k] += 1
            return x

        return transform

    class SpySGD(torch.optim.SGD):
        def __init__(self, *a, **kw):
            sgd.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(aft, "pgd_transform", spy_pgd)
    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    cfg = {**PBE, "epochs": 2, "batch_size": 16, "adversarial_schedule": schedule, "adversarial_batches": 3}
    _, info = build_defense(cfg).run(_copy(m), pois, seed=0)
    assert [r["selected"] for r in info["rounds"]] == [24, 72, 144]
    assert counts == adversarial and len(sgd) == optimisers
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3, 4, 5, 6]  # 2 epochs per round either way


def test_pbe_official_schedule_checks_its_settings():
    with pytest.raises(ConfigError, match="defenses.pbe.adversarial_schedule"):
        build_defense({**PBE, "adversarial_schedule": "some_batches"})
    with pytest.raises(ConfigError, match="defenses.pbe.schedule"):
        build_defense({**PBE, "schedule": "cosine"})
    with pytest.raises(ConfigError, match="defenses.pbe.adversarial_batches"):
        build_defense({**PBE, "adversarial_batches": -1})
    build_defense({**PBE, "schedule": "cosine", "adversarial_schedule": "every_batch"})  # no split: allowed


def test_aft_keeps_architecture_and_epoch_budget_and_monitor_only_observes(synthetic, backdoored):
    m, atk, _ = backdoored
    clean = synthetic["train"].subset(torch.arange(0, 240, 4))
    calls = []
    model, info = build_defense({"type": "aft", "epochs": 2, "batch_size": 16, "steps": 2}).run(
        _copy(m), clean, seed=0, monitor=lambda _m: calls.append(1) or {})
    assert type(model) is type(m) and [h["epoch"] for h in info["history"]] == [1, 2]
    assert not _same(model, m)
    plain, _ = build_defense({"type": "aft", "epochs": 2, "batch_size": 16, "steps": 2}).run(_copy(m), clean, seed=0)
    assert _same(model, plain)


def test_observation_with_zero_budget_is_the_confusion_matrix(synthetic, backdoored):
    m, atk, _ = backdoored
    test = synthetic["test"]
    res = observe(m, test, atk, n_images=40, eps=0.0, step=0.0, steps=0, seed=0)
    counts = torch.tensor(res["matrix_counts"])
    assert counts.sum() == 40 and counts[0].sum() == 0  # only non-target images
    idx = torch.nonzero(test.y != 0).flatten()
    pick = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:40]].sort().values
    pred = predict(m, test.x[pick])
    assert abs(res["adv_success"] - 100.0 * float((pred != test.y[pick]).float().mean())) < 1e-9
    assert abs(res["adv_to_target"] - 100.0 * counts[:, 0].sum().item() / 40) < 1e-9
    assert abs(res["cos_adv_trigger"] - res["cos_clean_trigger"]) < 1e-6  # no perturbation: same features


def test_observation_on_a_backdoored_model_sends_adversarial_examples_to_the_target(synthetic, backdoored):
    m, atk, _ = backdoored
    res = observe(m, synthetic["test"], atk, n_images=60, eps=EPS, step=STEP, steps=7, seed=0)
    assert res["adv_success"] > 0 and len(res["matrix_percent"]) == 4
    feats = penultimate_features(m, to_float(synthetic["test"].x[:5]))
    assert feats.shape[0] == 5 and feats.dim() == 2
