"""Model checkpoints: safetensors weights whose metadata names the architecture, plus a JSON sidecar."""

from __future__ import annotations

import os

import torch

from dormant.errors import CheckpointError
from dormant.io import load_tensors, save_tensors, sidecar, write_json
from dormant.nets import build_model


def sidecar_path(weights_path) -> str:
    root, _ = os.path.splitext(str(weights_path))
    return root + ".json"


def save_model(model: torch.nn.Module, path, *, arch: str, num_classes: int, config: dict, seed: int,
               metrics: dict | None = None, **extra) -> None:
    """Writes ``path`` (safetensors) and its sidecar ``<path minus .safetensors>.json``."""
    meta = {"arch": arch, "num_classes": num_classes}
    state = {k: v for k, v in model.state_dict().items()}
    save_tensors(state, path, meta)
    write_json(sidecar_path(path), sidecar(config, seed, metrics, model=meta, **extra))


def load_model(path, device="cpu") -> torch.nn.Module:
    """Rebuilds the architecture named in the file and loads its weights (no pickle involved)."""
    tensors, meta = load_tensors(path)
    if "arch" not in meta:
        raise CheckpointError(f"{path} is not a model checkpoint of this pipeline (no 'arch' in its metadata)")
    model = build_model(meta["arch"], meta["num_classes"])
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit architecture {meta['arch']}: {e}") from e
    return model.to(device).eval()
