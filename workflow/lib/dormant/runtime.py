"""Where and how a stage runs: device choice, thread count, logging. Not experiment config."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

import torch

from dormant.errors import ConfigError


def pick_device(want: str | None = None) -> torch.device:
    """``want`` (cpu, cuda, cuda:1, ...) if given, else ``$DORMANT_DEVICE``, else CUDA when available, else CPU."""
    want = want or os.environ.get("DORMANT_DEVICE", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(want)
    except RuntimeError:
        raise ConfigError(f"device {want!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {want!r} was asked for, but CUDA is not available here")
    return device


#: the precision modes of :func:`autocast` (``$DORMANT_PRECISION``): ``auto`` runs the fast precision on CUDA and
#: fp32 on the CPU, ``fast`` runs it on the CPU as well (bf16 autocast, to exercise that path), ``fp32`` nowhere
PRECISIONS = ("auto", "fast", "fp32")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """A boolean environment variable (1/true/yes/on or 0/false/no/off/unset), checked."""
    value = os.environ.get(name, "").strip().lower()
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise ConfigError(f"${name}={os.environ[name]!r} is not a boolean (1/0, true/false, yes/no, on/off)")
    return value in TRUE_WORDS


def precision(want: str | None = None) -> str:
    """``want`` if given, else ``$DORMANT_PRECISION``, else ``auto``; one of :data:`PRECISIONS`."""
    mode = (want or os.environ.get("DORMANT_PRECISION") or "auto").strip().lower()
    if mode not in PRECISIONS:
        raise ConfigError(f"precision {mode!r} (DORMANT_PRECISION) is not one of {', '.join(PRECISIONS)}")
    return mode


def fast_dtype(device) -> torch.dtype | None:
    """The dtype of the fast precision on ``device``, None where it is fp32: bf16 on GPUs that compute it
    natively (compute capability 8.0 and up: Ampere, Hopper, ...), fp16 on older ones (which only emulate
    bf16; fp16 needs loss scaling, :func:`grad_scaler`), bf16 on the CPU only when asked for (``fast``)."""
    dev = torch.device(device)
    mode = precision()
    if mode == "fp32" or (dev.type == "cpu" and mode == "auto"):
        return None
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(dev) >= (8, 0) else torch.float16
    if dev.type == "cpu":
        return torch.bfloat16
    return None


def channels_last(device) -> bool:
    """Whether models and batches on ``device`` use the channels-last layout: on CUDA (tensor-core convolutions
    want NHWC), on the CPU only when ``$DORMANT_CHANNELS_LAST`` asks (to test that path; results there match the
    contiguous layout to rounding, not bit for bit)."""
    return torch.device(device).type == "cuda" or env_flag("DORMANT_CHANNELS_LAST")


def memory_format(device) -> torch.memory_format:
    """The memory format of 4-d tensors on ``device`` (:func:`channels_last`)."""
    return torch.channels_last if channels_last(device) else torch.contiguous_format


_exact_depth = 0  # how many exact() contexts are open: autocast() inside one stays fp32


def autocast(device, *, fp16: bool = False):
    """The fast precision on ``device`` (:func:`fast_dtype`) as an autocast context; where that is fp32, and
    inside :func:`exact`, a disabled one, so CPU runs stay fp32 and bit-reproducible by default.

    ``fp16``: the caller can take fp16 (no gradients, or a backward through :func:`grad_scaler`). Where the fast
    precision is fp16 (GPUs before compute capability 8.0) other callers get fp32: an unscaled fp16 backward
    (trigger reversal, adversarial inner loops, delta optimisation) underflows small gradients to zero."""
    dev = torch.device(device)
    dtype = fast_dtype(dev)
    if dtype is None or _exact_depth or (dtype == torch.float16 and not fp16):
        return torch.autocast(dev.type, enabled=False)
    return torch.autocast(dev.type, dtype=dtype)


def grad_scaler(device) -> torch.amp.GradScaler:
    """Loss scaling for training under :func:`autocast`: enabled only where the fast precision is fp16 (its
    small exponent range underflows small gradients); a pass-through otherwise."""
    dev = torch.device(device)
    return torch.amp.GradScaler(dev.type, enabled=fast_dtype(dev) == torch.float16)


@contextmanager
def exact(device):
    """fp32 work inside the fast-precision code: autocast off and TF32 off for matmuls and cuDNN, the previous
    settings restored after. For what is reported or decides a selection (metrics, PBE's scores, BEC/CKA
    activations, evidence): a reduced mantissa (bf16: 8 bits, TF32: 10) moves near-ties."""
    global _exact_depth
    dev = torch.device(device)
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    _exact_depth += 1
    try:
        with torch.autocast(dev.type, enabled=False):
            yield
    finally:
        _exact_depth -= 1
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def configure(deterministic: bool) -> None:
    """Backend settings of a run. ``deterministic``: cuDNN picks deterministic kernels and no autotuning, torch
    refuses (warns about) nondeterministic ops, cuBLAS gets a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, read
    when CUDA starts, so this must run first), TF32 off; CUDA runs are then bit-reproducible on the same GPU
    model and software stack, at some speed (docs/operations.md). Otherwise the fast defaults: cuDNN autotuning
    and TF32 (CPU results do not depend on either)."""
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic


#: resume checkpoints of a training run: every this many epochs or minutes, whichever comes first (and after the
#: last epoch); params.yaml ``runtime`` sets them through ``$DORMANT_CHECKPOINT_EVERY_EPOCHS``/``_MINUTES``
CHECKPOINT_EVERY_EPOCHS = 10
CHECKPOINT_EVERY_MINUTES = 10.0


#: params.yaml ``runtime`` key -> the environment variable that carries it into every job
RUNTIME_ENV = {"deterministic": "DORMANT_DETERMINISTIC", "checkpoint_every_epochs": "DORMANT_CHECKPOINT_EVERY_EPOCHS",
               "checkpoint_every_minutes": "DORMANT_CHECKPOINT_EVERY_MINUTES"}


def runtime_env(section: dict | None) -> dict[str, str]:
    """The environment variables of params.yaml's ``runtime`` section (absent keys: none, the defaults hold).
    Snakemake exports them to its jobs; they are not parameters, so changing them reruns nothing."""
    out = {}
    for key, value in (section or {}).items():
        if key not in RUNTIME_ENV:
            raise ConfigError(f"runtime.{key}: unknown key; known: {', '.join(RUNTIME_ENV)}")
        out[RUNTIME_ENV[key]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out


def checkpoint_cadence() -> tuple[int, float]:
    """(epochs, minutes) between resume checkpoints, from the environment or the defaults, checked."""
    out = []
    for key, default, kind in (("EPOCHS", CHECKPOINT_EVERY_EPOCHS, int), ("MINUTES", CHECKPOINT_EVERY_MINUTES, float)):
        name = f"DORMANT_CHECKPOINT_EVERY_{key}"
        raw = os.environ.get(name)
        try:
            value = default if raw in (None, "") else kind(raw)
        except ValueError:
            value = -1
        if not value > 0:
            raise ConfigError(f"${name}={raw!r} (runtime.checkpoint_every_{key.lower()}): must be a positive "
                              f"{'integer' if kind is int else 'number'}")
        out.append(value)
    return out[0], out[1]


def setup(threads: int | None = None, device: str | None = None, deterministic: bool | None = None) -> torch.device:
    """Logging to stderr, torch threads, backend settings (:func:`configure`; ``deterministic`` defaults to
    ``$DORMANT_DETERMINISTIC``); returns the device (``device`` overrides the default)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if threads:
        torch.set_num_threads(int(threads))
    deterministic = env_flag("DORMANT_DETERMINISTIC") if deterministic is None else deterministic
    configure(deterministic)  # before the first CUDA call: cuBLAS reads its workspace setting when it starts
    device = pick_device(device)
    logging.getLogger("dormant").info("device %s, %d threads, precision %s%s", device, torch.get_num_threads(),
                                      fast_dtype(device) or "fp32", ", deterministic" if deterministic else "")
    return device
