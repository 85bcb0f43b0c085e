"""Artifact I/O: atomic writes, safetensors checkpoints, JSON sidecars with config, seed and code version.

Checkpoints are safetensors only, so no pickle from an untrusted file is ever loaded.
Every write goes to a temporary file in the same folder and is renamed into place, so a
killed job never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dormant.errors import CheckpointError

LIB_DIR = Path(__file__).resolve().parent


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path next to ``path``; renames it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _jsonable(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path) -> Any:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"missing file: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt JSON file {p}: {e}") from e


def save_tensors(tensors: dict[str, torch.Tensor], path, metadata: dict | None = None) -> None:
    """safetensors file with a JSON metadata blob under the key ``dormant``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"dormant": json.dumps(metadata or {}, sort_keys=True, default=_jsonable)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_tensors(path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"missing checkpoint: {p}")
    try:
        with safe_open(str(p), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads((f.metadata() or {}).get("dormant", "{}"))
    except Exception as e:  # safetensors raises several types on truncation/garbage
        raise CheckpointError(f"corrupt or unreadable checkpoint {p}: {e}") from e
    return tensors, meta


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """Package version, git commit (if any) and a hash of the library sources (works without git)."""
    from dormant import __version__

    h = hashlib.sha256()
    for f in sorted(LIB_DIR.rglob("*.py")):
        h.update(str(f.relative_to(LIB_DIR)).encode())
        h.update(f.read_bytes())
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=LIB_DIR, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip() or None
    return {"package": __version__, "git_commit": commit, "source_sha256": h.hexdigest()[:16]}


def sidecar(config: dict, seed: int | None, metrics: dict | None = None, **extra) -> dict:
    """The standard sidecar: what made this artifact and what it scored."""
    return {
        "config": config,
        "seed": seed,
        "code_version": code_version(),
        "metrics": metrics or {},
        "created_unix": round(time.time(), 3),
        "torch": torch.__version__,
        **extra,
    }


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes; None entries count as absent."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        flat = t.detach().reshape(-1).contiguous().cpu()
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_jsonable).encode()).hexdigest()[:16]
