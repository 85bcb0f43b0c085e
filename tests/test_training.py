import pytest
import torch
from dormant import training
from dormant.analysis.metrics import evaluate
from dormant.attacks import create_attack
from dormant.defenses import build_defense
from dormant.errors import CheckpointError
from dormant.nets import build_model
from dormant.nets.checkpoint import load_model, save_model

CFG = {"epochs": 4, "batch_size": 32, "lr": 0.05, "crop_padding": 2}


def _fit(data, seed=0, cfg=CFG, **kw):
    torch.manual_seed(seed)
    m = build_model("cnn_tiny", data.num_classes)
    h = training.train(m, data, cfg, seed=seed, **kw)
    return m, h


def _differing(a, b) -> list[str]:
    """Names of the state entries in which two models differ (empty: bit-identical)."""
    sb = b.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])]


def test_training_learns_and_backdoor_is_implanted(synthetic):
    atk = create_attack({"type": "badnets", "ratio": 0.1, "target": 0}, synthetic["train"].x, synthetic["train"].y,
                        4, seed=0)
    m, h = _fit(synthetic["train"], cfg={**CFG, "epochs": 15, "augment": False}, attack=atk,
                poison_mask=atk.poison_mask(len(synthetic["train"])))
    assert len(h) == 15 and h[-1]["loss"] < h[0]["loss"]
    r = evaluate(m, synthetic["test"], atk)
    assert r["c_acc"] > 60  # chance is 25
    assert r["asr"] > 60


def test_cosine_schedule():
    cfg = {**training.DEFAULTS, "epochs": 4, "lr": 0.1}
    assert [round(training.lr_at(cfg, e), 6) for e in range(4)] == [0.1, 0.085355, 0.05, 0.014645]


def test_cpu_training_is_bit_reproducible(synthetic):
    a, _ = _fit(synthetic["train"])
    b, _ = _fit(synthetic["train"])
    assert not _differing(a, b)


def test_resume_after_interruption_gives_identical_weights(synthetic, tmp_path):
    ref, href = _fit(synthetic["train"])
    ckpt = tmp_path / "resume.safetensors"
    calls = {"n": 0}

    def crash_after_two(_m):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill during epoch 3")
        return {}

    with pytest.raises(KeyboardInterrupt):
        _fit(synthetic["train"], checkpoint=ckpt, eval_fn=crash_after_two, checkpoint_every=(1, 60.0))
    assert ckpt.exists()
    resumed, h = _fit(synthetic["train"], seed=0, checkpoint=ckpt)
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert not _differing(ref, resumed)


def test_checkpoint_of_another_config_is_ignored(synthetic, tmp_path, caplog):
    ckpt = tmp_path / "resume.safetensors"
    stale, _ = _fit(synthetic["train"], checkpoint=ckpt)
    cfg = {**CFG, "lr": 0.01}
    fresh, _ = _fit(synthetic["train"], cfg=cfg)
    with caplog.at_level("WARNING", logger="dormant.training"):
        got, _ = _fit(synthetic["train"], cfg=cfg, checkpoint=ckpt)
    assert "ignoring checkpoint" in caplog.text
    assert not _differing(got, fresh) and _differing(got, stale)


def test_model_checkpoint_roundtrip_and_errors(synthetic, tmp_path):
    m = build_model("cnn_tiny", 4)
    p = tmp_path / "m.safetensors"
    save_model(m, p, arch="cnn_tiny", num_classes=4, config={"x": 1}, seed=3, metrics={"c_acc": 1.0})
    m2 = load_model(p)
    assert not _differing(m, m2)
    import json

    side = json.loads((tmp_path / "m.json").read_text())
    assert side["seed"] == 3 and side["config"] == {"x": 1} and "source_sha256" in side["code_version"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "none.safetensors")


def test_ft_defense_runs_keeps_architecture_and_budget(synthetic):
    m = build_model("cnn_tiny", 4)
    d = build_defense({"type": "ft", "epochs": 2, "lr": 0.01, "batch_size": 16})
    out, info = d.run(m, synthetic["train"].subset(torch.arange(0, 240, 4)), seed=0)
    assert type(out) is type(m) and len(info["history"]) == 2


def test_checkpoint_of_other_data_or_other_start_is_ignored(synthetic, tmp_path, caplog):
    """Same config and size, different content: a stale checkpoint must not be resumed."""
    ckpt = tmp_path / "resume.safetensors"
    stale, _ = _fit(synthetic["train"], checkpoint=ckpt)
    other = synthetic["train"].subset(torch.arange(len(synthetic["train"])).flip(0))  # same n, other content
    other.x = 255 - other.x
    fresh, _ = _fit(other)
    with caplog.at_level("INFO", logger="dormant.training"):
        got, _ = _fit(other, checkpoint=ckpt)
    assert "ignoring checkpoint" in caplog.text and not _differing(got, fresh) and _differing(got, stale)
    caplog.clear()
    with caplog.at_level("INFO", logger="dormant.training"):
        again, _ = _fit(other, checkpoint=ckpt)  # now the checkpoint matches and is resumed
    assert "resumed from" in caplog.text and not _differing(again, fresh)
    caplog.clear()
    torch.manual_seed(1)
    m = build_model("cnn_tiny", 4)  # other starting weights, e.g. a retrained backdoored model under FT
    with caplog.at_level("INFO", logger="dormant.training"):
        training.train(m, other, CFG, seed=0, checkpoint=ckpt)
    assert "ignoring checkpoint" in caplog.text and _differing(m, fresh)
