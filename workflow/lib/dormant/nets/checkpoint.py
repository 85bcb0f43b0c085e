"""Model checkpoints: safetensors weights whose metadata names the architecture, plus a JSON sidecar.

The sidecar records the sha256 of the weights file it describes (``weights_sha256``); :func:`read_model`
reads the weights once, checks the pair, and retries briefly when a concurrent writer replaced one of the
two between the reads, so a reader never pairs one run's weights with another run's sidecar. The weights
file alone is the authority on the architecture: its metadata names it, and its tensors are checked against
that architecture (keys, shapes, dtypes, finiteness) before anything of the file's size is allocated.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch

from dormant.errors import CheckpointError, NonFiniteError
from dormant.io import check_tensor, load_tensor_bytes, meta_field, read_sidecar, save_tensors, sidecar, write_json
from dormant.nets import MODELS, build_model
from dormant.runtime import memory_format

MAX_CLASSES = 100_000
PAIR_RETRIES = 20


def sidecar_path(weights_path) -> str:
    root, _ = os.path.splitext(str(weights_path))
    return root + ".json"


def check_finite(model: torch.nn.Module, what: str) -> None:
    """Raises :class:`NonFiniteError` naming the first tensor of ``model`` that is not finite."""
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise NonFiniteError(f"{what}: weight {k!r} holds NaN or infinite values (training diverged: lower "
                                 "the learning rate); no model was written")


def save_model(model: torch.nn.Module, path, *, arch: str, num_classes: int, config: dict, seed: int,
               metrics: dict | None = None, **extra) -> None:
    """Writes ``path`` (safetensors) and its sidecar ``<path minus .safetensors>.json``, which records the
    sha256 of the weights file. Refuses (writing nothing) a model with non-finite weights."""
    check_finite(model, str(path))
    meta = {"arch": arch, "num_classes": num_classes}
    state = {k: v for k, v in model.state_dict().items()}
    digest = save_tensors(state, path, meta)
    write_json(sidecar_path(path), sidecar(config, seed, metrics, model=meta, weights_sha256=digest, **extra))


def model_meta(meta: dict, path) -> tuple[str, int]:
    """(arch, num_classes) of a weights file's metadata, checked."""
    if "arch" not in meta:
        raise CheckpointError(f"{path} is not a model checkpoint of this pipeline (no 'arch' in its metadata)")
    arch = meta_field(meta, "arch", path, str)
    if arch not in MODELS.names():
        raise CheckpointError(f"{path}: metadata field 'arch' = {arch[:64]!r} is not a known architecture "
                              f"({', '.join(MODELS.names())})")
    n = meta_field(meta, "num_classes", path, int, lo=2, hi=MAX_CLASSES)
    return arch, n


def _checked_model(tensors: dict, meta: dict, path) -> torch.nn.Module:
    arch, n = model_meta(meta, path)
    with torch.device("meta"):  # the expected keys, shapes and dtypes, without allocating anything
        expected = build_model(arch, n).state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not fit architecture {arch} with {n} classes (missing: "
                              f"{', '.join(missing[:3]) or '-'}; unexpected: {', '.join(unexpected[:3]) or '-'})")
    for k, ref in expected.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(t.shape)}, architecture {arch} with {n} "
                                  f"classes needs {tuple(ref.shape)}")
        check_tensor(t, k, path, dtypes=(ref.dtype,), finite=True)
    model = build_model(arch, n)
    model.load_state_dict(tensors)
    return model


def read_model(path, device="cpu", *, with_sidecar: bool = True,
               require_sidecar: bool = False) -> tuple[torch.nn.Module, dict, dict | None]:
    """(model, weights metadata, sidecar) of a checkpoint, every part checked, on ``device`` in its memory format
    (channels-last on CUDA: :func:`dormant.runtime.memory_format`). With ``with_sidecar`` and a
    sidecar present, its ``weights_sha256`` must match the weights read (a brief retry covers a concurrent
    writer); sidecars of older runs without the digest are accepted as they are."""
    p = Path(path)
    side = Path(sidecar_path(p))
    for attempt in range(PAIR_RETRIES):
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"missing checkpoint: {p}") from None
        except OSError as e:
            raise CheckpointError(f"cannot read {p}: {e.strerror or e}") from None
        if require_sidecar and not side.exists():
            raise CheckpointError(f"missing sidecar {side} of {p}")
        car = read_sidecar(side, keys=("model",)) if with_sidecar and side.exists() else None
        want = car.get("weights_sha256") if car is not None else None
        if want is None or hashlib.sha256(raw).hexdigest() == want:
            break
        if attempt + 1 == PAIR_RETRIES:
            raise CheckpointError(f"{p} does not match its sidecar {side} (weights_sha256 differs): the pair was "
                                  "written by different runs; rerun the stage that makes it")
        time.sleep(0.05)
    tensors, meta = load_tensor_bytes(raw, p)
    model = _checked_model(tensors, meta, p)
    return model.to(device, memory_format=memory_format(device)).eval(), meta, car


def load_model(path, device="cpu") -> torch.nn.Module:
    """Rebuilds the architecture named in the file and loads its weights (no pickle involved)."""
    return read_model(path, device)[0]
