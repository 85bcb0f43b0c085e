"""Artifact I/O: atomic writes, safetensors checkpoints, JSON sidecars with config, seed and code version.

Checkpoints are safetensors only, so no pickle from an untrusted file is ever loaded, and every reader
treats its file as untrusted: structure, keys, types, dtypes, shapes and ranges are checked before use and
a bad file raises :class:`CheckpointError` naming the file and the field.

Every write goes to a temporary file ``.<name>.<host>.<pid>.<random>.tmp`` in the same folder, is flushed
and fsynced, gets the mode of a plain file under the user's umask (0644 by default; ``mkstemp`` alone would
leave 0600), and is renamed into place, then the folder is fsynced: a killed job never leaves a half-written
artifact behind. Temporary files of writers that died (same host, process gone) are removed by the next
write into that folder; git and DVC ignore them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dormant.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported inside the functions that use it: `dormant --help` stays torch-free
    import torch

LIB_DIR = Path(__file__).resolve().parent
TMP_SUFFIX = ".tmp"
_HOST = socket.gethostname().replace(".", "_")[:32] or "host"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``); elsewhere
    by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)  # briefly the strictest sensible mask, never a permissive one
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask (0o644 under the usual 022)."""
    return 0o666 & ~current_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Removes temporary files that writers on this host left when killed (their process is gone)."""
    removed = []
    with contextlib.suppress(OSError):
        for f in Path(folder).iterdir():
            name = f.name
            if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                continue
            parts = name[: -len(TMP_SUFFIX)].rsplit(".", 3)
            if len(parts) != 4 or parts[1] != _HOST or not parts[2].isdigit():
                continue  # another host's writer, or not ours: leave it
            if int(parts[2]) != os.getpid() and not _pid_alive(int(parts[2])):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    removed.append(f)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path next to ``path``; renames it onto ``path`` only if the block succeeds.

    The data is fsynced before the rename and the folder after it; the file gets the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # a writer that replaced the file (safetensors) left it with its own mode
            with contextlib.suppress(OSError):  # a file system without modes
                os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _jsonable(obj):
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number")


def read_json(path, *, expect: type | None = None, keys: tuple[str, ...] = (), finite: bool = False) -> Any:
    """A JSON artifact, checked: UTF-8, valid JSON, of type ``expect`` (e.g. dict) with the top-level ``keys``;
    ``finite``: NaN and Infinity are refused (sidecars). Any problem is a :class:`CheckpointError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"missing file: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); a corrupt JSON file") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant) if finite else json.loads(text)
    except (json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"corrupt JSON file {p}: {e}") from None
    if keys and expect is None:
        expect = dict
    if expect is not None and not isinstance(obj, expect):
        raise CheckpointError(f"{p}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                              f"got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise CheckpointError(f"{p}: missing field(s) {', '.join(missing)}")
    return obj


def read_sidecar(path, keys: tuple[str, ...] = ()) -> dict:
    """An artifact's JSON sidecar: an object of finite values with the given fields."""
    return read_json(path, expect=dict, keys=keys, finite=True)


def save_tensors(tensors: dict[str, torch.Tensor], path, metadata: dict | None = None) -> str:
    """safetensors file with a JSON metadata blob under the key ``dormant``; returns the file's sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"dormant": json.dumps(metadata or {}, sort_keys=True, default=_jsonable)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        digest = file_sha256(tmp)
    return digest


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_of(raw_meta: dict | None, p: Path) -> dict:
    try:
        meta = json.loads((raw_meta or {}).get("dormant", "{}"), parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{p}: metadata 'dormant' is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p}: metadata 'dormant' must be a JSON object, got {type(meta).__name__}")
    return meta


def load_tensors(path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors and the ``dormant`` metadata (a JSON object of finite values) of a safetensors file."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"missing checkpoint: {p}")
    try:
        with safe_open(str(p), framework="pt", device=str(device)) as f:
            raw_meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types on truncation/garbage
        raise CheckpointError(f"corrupt or unreadable checkpoint {p}: {e}") from e
    return tensors, _meta_of(raw_meta, p)


def load_tensor_bytes(raw: bytes, path) -> tuple[dict[str, torch.Tensor], dict]:
    """As :func:`load_tensors` from the bytes of a file already read (one read: digest and content agree)."""
    from safetensors.torch import load as st_load

    p = Path(path)
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        raw_meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__")
    except Exception as e:
        raise CheckpointError(f"corrupt or unreadable checkpoint {p}: {e}") from e
    return tensors, _meta_of(raw_meta, p)


def meta_field(meta: dict, key: str, path, kind: type | tuple[type, ...], *, lo=None, hi=None,
               what: str = "metadata"):
    """``meta[key]``, checked to be of ``kind`` (booleans are not numbers) and within [lo, hi]."""
    if key not in meta:
        raise CheckpointError(f"{path}: {what} field {key!r} is missing")
    v = meta[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise CheckpointError(f"{path}: {what} field {key!r} must be {' or '.join(k.__name__ for k in kinds)}, "
                              f"got {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise CheckpointError(f"{path}: {what} field {key!r} is not finite")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise CheckpointError(f"{path}: {what} field {key!r} = {v} is outside [{lo}, {hi}]")
    return v


def check_tensor(t: torch.Tensor, name: str, path, *, dtypes=None, ndim: int | None = None,
                 finite: bool = False) -> torch.Tensor:
    """A tensor read from ``path``, checked for dtype, rank and (floating point) finiteness."""
    import torch

    if dtypes is not None and t.dtype not in dtypes:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {t.dtype}, expected "
                              f"{' or '.join(str(d) for d in dtypes)}")
    if ndim is not None and t.dim() != ndim:
        raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {ndim} dimensions")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return t


def load_deltas(path, image_shape, device="cpu", required: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Universal perturbations (``delta_*`` tensors) of a re-activation stage, checked: floating point, finite,
    one image's shape (``C x H x W``, optionally with a leading 1), and the ``required`` names present."""
    import torch

    tensors, _ = load_tensors(path)
    shape = tuple(image_shape)
    for k, v in tensors.items():
        if not k.startswith("delta_"):
            raise CheckpointError(f"{path}: unexpected tensor {k!r} (a delta file holds delta_* tensors)")
        check_tensor(v, k, path, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64), finite=True)
        if tuple(v.shape) not in (shape, (1, *shape)):
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, the images are {shape}")
    missing = [k for k in required if k not in tensors]
    if missing:
        raise CheckpointError(f"{path}: tensor(s) {', '.join(missing)} missing")
    return {k: v.to(device) for k, v in tensors.items()}


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
    import torch

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
    import torch

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
