"""Reading a foreign ``torch.save`` file without running its code.

A ``.pt`` file is a pickle, and a pickle can name any Python callable to run while it loads. Foreign records
are read only with ``torch.load(..., weights_only=True)``: tensors, plain containers (dict, list, tuple,
str, numbers) and nothing else, plus one small allowlist, numpy arrays. BackdoorBench's ``attack_result.pt``
stores its poisoned-set states (``bd_train``, ``bd_test``: index arrays, poison indicators, image arrays) as
numpy arrays, so without them no real record would load. The allowed globals only allocate an array of a
given shape and dtype and fill it with bytes (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``); an
array of Python objects gets its items from the same restricted unpickler, so nothing else can run. Anything
else (a custom class, a ``__reduce__`` that calls a function, PIL images) is refused with the name of the
global the file asked for.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

from dormant.errors import CheckpointError


def _numpy_globals() -> list:
    import numpy as np

    try:
        core = np._core.multiarray
    except AttributeError:  # numpy < 2
        core = np.core.multiarray
    out = [np.ndarray, np.dtype]
    for fn in (core._reconstruct, core.scalar):
        # a record written under numpy 1.x names numpy.core, one under 2.x numpy._core: allow both spellings
        out += [(fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    for name in dir(getattr(np, "dtypes", None) or object()):  # numpy >= 1.25 pickles dtypes by class
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype) and cls.__name__ != "ObjectDType":
            out.append(cls)
    return out


def load_pickle(path, what: str = "record"):
    """The object of a ``torch.save`` file, read with ``weights_only=True`` and the numpy allowlist only.

    Raises :class:`CheckpointError` naming the file when it is missing, not a torch file, or needs code."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"missing {what}: {p}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if m is None:  # garbage or an opcode outside the restricted set: nothing was run either way
            raise CheckpointError(f"{p}: not a readable torch.save file of tensors and plain containers "
                                  f"(weights-only load failed: {str(e).splitlines()[-1][:200]})") from None
        raise CheckpointError(
            f"{p}: refused, a code-carrying pickle: loading it would run code (it asks for {m.group(1)}). Only "
            "tensors, plain containers and numpy arrays are read (torch.load weights_only=True); re-save the "
            "model's state dict alone (torch.save(model.state_dict(), path)) on a machine you trust") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f"{p}: not a readable torch.save file: {str(e).splitlines()[0][:200]}") from None
