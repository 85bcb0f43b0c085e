"""Precision, determinism, layout and checkpoint cadence of a run (dormant.runtime; docs/operations.md
"Precision and determinism"), exercised on the CPU: bf16 autocast there on request, channels-last on
request, the deterministic switch's backend flags, and resume checkpoints every N epochs."""

import copy

import pytest
import torch
from dormant import runtime, training
from dormant.analysis.metrics import evaluate, predict
from dormant.defenses import build_defense
from dormant.errors import ConfigError
from dormant.nets import build_model
from dormant.nets.checkpoint import load_model, save_model

CFG = {"epochs": 2, "batch_size": 32, "lr": 0.05, "crop_padding": 2}


@pytest.fixture
def backend_flags():
    """Restores every global setting the tests below change."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, algos, warn,
     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved
    torch.use_deterministic_algorithms(algos, warn_only=warn)


def _conv(m):
    """The first convolution weight of a model."""
    return next(p for p in m.parameters() if p.dim() == 4)


def _fit(train, cfg=CFG, **kw):
    torch.manual_seed(0)
    m = build_model("cnn_tiny", 4)
    training.train(m, train, cfg, seed=0, **kw)
    return m


# --------------------------------------------------------------------------- precision


def test_fast_precision_by_device_and_mode(monkeypatch):
    monkeypatch.delenv("DORMANT_PRECISION", raising=False)
    assert runtime.fast_dtype("cpu") is None  # auto: fp32 on the CPU
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    assert runtime.fast_dtype("cuda") == torch.bfloat16  # Ampere and later compute bf16 natively
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    assert runtime.fast_dtype("cuda") == torch.float16  # Turing: fp16 (with loss scaling), not emulated bf16
    monkeypatch.setenv("DORMANT_PRECISION", "fast")
    assert runtime.fast_dtype("cpu") == torch.bfloat16 and runtime.grad_scaler("cpu").is_enabled() is False
    monkeypatch.setenv("DORMANT_PRECISION", "fp32")
    assert runtime.fast_dtype("cuda") is None and runtime.fast_dtype("cpu") is None
    monkeypatch.setenv("DORMANT_PRECISION", "half")
    with pytest.raises(ConfigError, match="DORMANT_PRECISION"):
        runtime.fast_dtype("cpu")


def test_cpu_bf16_training_step_runs_and_metrics_stay_fp32(synthetic, monkeypatch):
    """With the fast path asked for, the CPU trains under bf16 autocast (a conv's output is bf16 inside it), the
    weights stay fp32, and the reported predictions are those of the fp32 model (exact() inside autocast)."""
    train, test = synthetic["train"], synthetic["test"]
    monkeypatch.setenv("DORMANT_PRECISION", "fast")
    seen = []
    torch.manual_seed(0)
    m = build_model("cnn_tiny", 4)
    hook = m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    training.train(m, train, {**CFG, "epochs": 1}, seed=0)
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in m.parameters())
    seen.clear()
    with runtime.autocast("cpu"):  # even inside the fast precision, metrics run in fp32
        fast_pred = predict(m, test.x)
    assert set(seen) == {torch.float32}
    hook.remove()
    monkeypatch.setenv("DORMANT_PRECISION", "fp32")
    assert torch.equal(fast_pred, predict(m, test.x))
    ref = evaluate(m, test)
    monkeypatch.setenv("DORMANT_PRECISION", "fast")
    assert evaluate(m, test) == ref


def test_exact_turns_autocast_and_tf32_off_and_restores_them(backend_flags, monkeypatch):
    monkeypatch.setenv("DORMANT_PRECISION", "fast")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with runtime.autocast("cpu"):
        assert (a @ b).dtype == torch.bfloat16
        with runtime.exact("cpu"):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            assert (a @ b).dtype == torch.float32
            with runtime.autocast("cpu"):  # a library call that asks for the fast precision stays exact
                assert (a @ b).dtype == torch.float32
        assert (a @ b).dtype == torch.bfloat16
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


# --------------------------------------------------------------------------- determinism


def test_deterministic_switch_sets_cudnn_cublas_and_tf32(backend_flags, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setenv("DORMANT_DETERMINISTIC", "1")
    assert runtime.setup(device="cpu") == torch.device("cpu")
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("DORMANT_DETERMINISTIC", "0")
    runtime.setup(device="cpu")
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setenv("DORMANT_DETERMINISTIC", "sometimes")
    with pytest.raises(ConfigError, match="DORMANT_DETERMINISTIC"):
        runtime.setup(device="cpu")


def test_runtime_section_becomes_the_jobs_environment():
    assert runtime.runtime_env({"deterministic": True, "checkpoint_every_epochs": 5,
                                "checkpoint_every_minutes": 2.5}) == {
        "DORMANT_DETERMINISTIC": "1", "DORMANT_CHECKPOINT_EVERY_EPOCHS": "5",
        "DORMANT_CHECKPOINT_EVERY_MINUTES": "2.5"}
    assert runtime.runtime_env(None) == {}
    with pytest.raises(ConfigError, match="runtime.seed"):
        runtime.runtime_env({"seed": 1})


def test_deterministic_training_on_cpu_gives_the_same_weights(synthetic, backend_flags):
    ref = _fit(synthetic["train"])
    runtime.configure(deterministic=True)
    again = _fit(synthetic["train"])
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), again.state_dict().values()))


# --------------------------------------------------------------------------- channels-last


def test_channels_last_forced_on_cpu_loads_trains_and_defends(synthetic, backdoored, tmp_path, monkeypatch):
    """The CUDA layout on the CPU: models load channels-last, training keeps the caller's layout and matches the
    contiguous run to rounding, and defenses that reshape weights (pruning, CLP, ANP) accept such models."""
    m, _, pois = backdoored
    path = tmp_path / "m.safetensors"
    save_model(m, path, arch="cnn_tiny", num_classes=4, config={}, seed=0)
    short = {**CFG, "epochs": 1, "lr": 0.01}
    ref = _fit(synthetic["train"], cfg=short)
    monkeypatch.setenv("DORMANT_CHANNELS_LAST", "1")
    loaded = load_model(path)
    assert _conv(loaded).is_contiguous(memory_format=torch.channels_last)
    assert not _conv(loaded).is_contiguous()
    x = synthetic["test"].x[:50].float() / 255
    assert torch.allclose(loaded(x), copy.deepcopy(m).eval()(x), atol=1e-5)
    got = _fit(synthetic["train"], cfg=short)
    assert _conv(got).is_contiguous()  # handed back as given
    for a, b in zip(ref.state_dict().values(), got.state_dict().values()):  # the same training to rounding
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    for cfg in ({"type": "clp", "u": 3.0}, {"type": "fp", "epochs": 1, "batch_size": 16, "holdout": 0.25},
                {"type": "anp", "iterations": 2, "batch_size": 16, "holdout": 0.25},
                {"type": "ft", "epochs": 1, "batch_size": 16}):
        out, _ = build_defense(cfg).run(copy.deepcopy(loaded), pois, seed=0)
        assert all(torch.isfinite(v).all() for v in out.state_dict().values() if v.is_floating_point())


# --------------------------------------------------------------------------- checkpoint cadence


def test_checkpoints_every_n_epochs_and_at_the_end_and_resume_from_them(synthetic, tmp_path):
    from safetensors import safe_open

    def epochs_in(path):
        with safe_open(str(path), "pt") as f:
            import json

            return json.loads(f.metadata()["dormant"])["epoch"] + 1

    cfg = {**CFG, "epochs": 5}
    torch.manual_seed(0)
    ref = build_model("cnn_tiny", 4)
    training.train(ref, synthetic["train"], cfg, seed=0)
    ckpt = tmp_path / "resume.safetensors"
    seen = []

    def crash_in_epoch_4(_m):
        seen.append(epochs_in(ckpt) if ckpt.exists() else 0)
        if len(seen) == 4:
            raise KeyboardInterrupt("simulated kill in epoch 4")
        return {}

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        training.train(build_model("cnn_tiny", 4), synthetic["train"], cfg, seed=0, checkpoint=ckpt,
                       eval_fn=crash_in_epoch_4, checkpoint_every=(2, 60.0))
    assert seen == [0, 0, 2, 2]  # written after epoch 2 only, before each epoch's evaluation could see it
    torch.manual_seed(0)
    resumed = build_model("cnn_tiny", 4)
    h = training.train(resumed, synthetic["train"], cfg, seed=0, checkpoint=ckpt, checkpoint_every=(2, 60.0))
    assert [r["epoch"] for r in h] == [1, 2, 3, 4, 5] and epochs_in(ckpt) == 5  # and after the last epoch
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))


def test_checkpoint_cadence_from_the_environment(monkeypatch):
    monkeypatch.delenv("DORMANT_CHECKPOINT_EVERY_EPOCHS", raising=False)
    monkeypatch.delenv("DORMANT_CHECKPOINT_EVERY_MINUTES", raising=False)
    assert runtime.checkpoint_cadence() == (runtime.CHECKPOINT_EVERY_EPOCHS, runtime.CHECKPOINT_EVERY_MINUTES)
    monkeypatch.setenv("DORMANT_CHECKPOINT_EVERY_EPOCHS", "3")
    monkeypatch.setenv("DORMANT_CHECKPOINT_EVERY_MINUTES", "0.5")
    assert runtime.checkpoint_cadence() == (3, 0.5)
    monkeypatch.setenv("DORMANT_CHECKPOINT_EVERY_EPOCHS", "0")
    with pytest.raises(ConfigError, match="runtime.checkpoint_every_epochs"):
        runtime.checkpoint_cadence()


def test_fp16_path_scales_the_loss_and_trains_with_and_without_sam(synthetic, monkeypatch):
    """The fp16 fast precision (GPUs before compute capability 8.0), run on the CPU: the loop's loss scaler is on,
    plain and sharpness-aware (FT-SAM) steps both train, and the weights stay fp32 and finite."""
    monkeypatch.setattr(runtime, "fast_dtype", lambda device: torch.float16)
    assert runtime.grad_scaler("cpu").is_enabled()
    x = torch.ones(2, 2)
    with runtime.autocast("cpu", fp16=True):  # the loop (loss scaler) and gradient-free passes take fp16
        assert (x @ x).dtype == torch.float16
    with runtime.autocast("cpu"):  # an unscaled backward (NC, ANP, PGD, delta optimisation) stays fp32
        assert (x @ x).dtype == torch.float32
    before = _fit(synthetic["train"], cfg={**CFG, "epochs": 0})
    plain = _fit(synthetic["train"], cfg={**CFG, "epochs": 1})
    sam, _ = build_defense({"type": "ftsam", "epochs": 1, "batch_size": 16}).run(copy.deepcopy(plain),
                                                                              synthetic["train"], seed=0)
    for net in (plain, sam):
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net.parameters())
    assert not torch.equal(_conv(before), _conv(plain)) and not torch.equal(_conv(plain), _conv(sam))
