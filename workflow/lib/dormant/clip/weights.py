"""Pretrained CLIP weights from a user path, loaded without running anything stored in the file, and the
image-tower layers that BEC and the re-activation attacks analyse.

The paper preset fine-tunes and evaluates OpenAI's CLIP RN50 as BadCLIP/CleanCLIP do (docs/methods.md
section 9). Its weights reach us in one of these forms; every one is read into an ``open_clip.CLIP`` built by
the caller:

- **safetensors** (preferred; e.g. a converted OpenAI or open_clip checkpoint);
- **a torch.save pickle** read by ``torch.load(weights_only=True)`` only, so it may hold tensors and plain
  containers but no object that needs code: a bare state dict in OpenAI's layout (``visual.*``,
  ``transformer.resblocks.*``, ``token_embedding.weight``, ``positional_embedding``, ``text_projection``,
  ``logit_scale``, ``ln_final.*``), or a training checkpoint that keeps it under ``"state_dict"`` or
  ``"model"``. CleanCLIP and BadCLIP write ``{"epoch", "name", "state_dict", "optimizer"}`` with the
  ``module.`` prefix of (Distributed)DataParallel when trained on several GPUs (open_clip's own training
  checkpoints look the same). Their model class keeps OpenAI's module names, which open_clip's ``CLIP``
  with a ResNet tower also uses (``visual.layerK.i.conv2``, ``visual.attnpool.*``, BatchNorm buffers
  included), so the only renaming needed is dropping that prefix;
- **a TorchScript archive** (OpenAI's released ``RN50.pt``): loading one executes TorchScript code stored in
  the file, so it needs the explicit opt-in ``clip.allow_torchscript`` (``allow_torchscript=True`` here); it
  is then read with ``torch.jit.load`` on the CPU and only its state dict is kept. Its three integer entries
  ``input_resolution``, ``context_length`` and ``vocab_size``, and the constant buffers open_clip does not
  save (the causal ``attn_mask``, in a TorchScript copy of an open_clip model), are checked against the
  model and dropped.

The format is recognised from the file's bytes, not its name. Every tensor is checked before the model is
touched: the keys must be exactly the model's (missing and unexpected keys named), shapes equal, floating
point values finite; OpenAI's partly float16 weights are cast to the model's float32.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

from dormant.errors import CheckpointError
from dormant.io import check_tensor, file_sha256, load_tensors

# torch and open_clip are imported inside the functions that use them: importing this module stays cheap

TORCHSCRIPT_OPTION = "clip.allow_torchscript"
OPENAI_INT_ENTRIES = {"input_resolution": ("visual", "image_size"), "context_length": (None, "context_length"),
                      "vocab_size": (None, "vocab_size")}
WRAPPER_KEYS = ("state_dict", "model")
DDP_PREFIX = "module."
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
SHOW = 3  # keys named in an error message


def _names(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return ", ".join(repr(k) for k in keys[:SHOW]) + more if keys else "-"


def sniff_format(path) -> str:
    """``"safetensors"``, ``"torchscript"`` or ``"torch"`` (a torch.save zip or legacy pickle), from the bytes."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"missing weights file: {p}")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                inner = {n.split("/", 1)[1] for n in z.namelist() if "/" in n}
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{p}: corrupt zip archive: {e}") from None
        if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
            return "torchscript"
        if "data.pkl" in inner:
            return "torch"
        raise CheckpointError(f"{p}: a zip archive that is neither a torch.save file nor a TorchScript archive")
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol marker: torch.save's legacy (pre-zip) format
        return "torch"
    raise CheckpointError(f"{p}: not a weights file (expected safetensors, a torch.save file or, with "
                          f"{TORCHSCRIPT_OPTION}, a TorchScript archive)")


def _weights_only_reason(err: Exception) -> str:
    """The line of torch's weights_only refusal that says what was refused (e.g. the class it would import)."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = lines[0] if lines else type(err).__name__
    return reason.split(" Please use", 1)[0][:200]


def _torch_load(p: Path, fmt_zip: bool) -> object:
    import torch

    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=fmt_zip)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{p}: needs arbitrary pickled code to load; only plain tensors (weights_only) are "
                              f"accepted: save its state dict (tensors only) or convert it to safetensors "
                              f"(torch: {_weights_only_reason(e)})") from None
    except Exception as e:  # truncated zips, bad storages, ...
        raise CheckpointError(f"{p}: corrupt or unreadable torch file: {type(e).__name__}: {str(e)[:200]}") from None


def _state_dict_of(obj: object, p: Path) -> tuple[dict, str | None]:
    """The tensors of a loaded pickle: the object itself, or what it keeps under 'state_dict' / 'model'."""
    import torch

    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: holds a {type(obj).__name__}, not a state dict")

    def tensors_only(d):
        return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if tensors_only(obj):
        return dict(obj), None
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict):
            bad = [str(k) for k, v in inner.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
            if bad or not inner:
                raise CheckpointError(f"{p}: {key!r} must map names to tensors; "
                                      f"{'it is empty' if not inner else 'not tensors: ' + _names(bad)}")
            return dict(inner), key
    raise CheckpointError(f"{p}: no state dict: neither tensors at the top level nor under "
                          f"{' or '.join(repr(k) for k in WRAPPER_KEYS)} (top-level keys: "
                          f"{_names(str(k) for k in obj)})")


def _drop_openai_ints(tensors: dict, model, p: Path) -> None:
    """OpenAI's archives carry the resolution, context length and vocabulary size as integer entries; they are
    not weights of open_clip's CLIP, so they are compared with the model and removed."""
    for key, (sub, attr) in OPENAI_INT_ENTRIES.items():
        if key not in tensors:
            continue
        t = tensors.pop(key)
        owner = getattr(model, sub) if sub else model
        want = getattr(owner, attr, None)
        if isinstance(want, (tuple, list)):
            want = want[0]
        if t.numel() != 1 or t.is_floating_point() or (isinstance(want, int) and int(t.item()) != want):
            raise CheckpointError(f"{p}: entry {key!r} = {t.tolist()} does not match the model ({want})")


def _drop_derived_buffers(tensors: dict, model, p: Path) -> None:
    """A TorchScript archive of an open_clip model stores its non-persistent buffers (the text tower's causal
    ``attn_mask``) like weights; they are constants of the configuration: equal to the model's, then dropped."""
    import torch

    for mod_name, mod in model.named_modules():
        for buf_name in mod._non_persistent_buffers_set:
            key = f"{mod_name}.{buf_name}" if mod_name else buf_name
            if key not in tensors:
                continue
            t, ref = tensors.pop(key), getattr(mod, buf_name)
            if ref is None or t.shape != ref.shape or not torch.equal(t.to(ref.dtype), ref.cpu()):
                raise CheckpointError(f"{p}: entry {key!r} differs from the model's (a constant of its configuration)")


def _fit(tensors: dict, model, p: Path) -> dict:
    """``tensors`` checked against ``model.state_dict()`` and cast to its dtypes."""
    import torch

    expected = model.state_dict()
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{p}: tensors do not fit the model (missing: {_names(missing)}; unexpected: "
                              f"{_names(unexpected)})")
    floats = tuple(getattr(torch, d) for d in FLOAT_DTYPES)
    out = {}
    for k, ref in expected.items():
        t = tensors[k]
        if k == "logit_scale" and t.numel() == 1 == ref.numel():
            t = t.reshape(ref.shape)  # some trainers keep the temperature as a 1-element vector
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{p}: tensor {k!r} has shape {tuple(t.shape)}, the model needs {tuple(ref.shape)}")
        if ref.is_floating_point():
            check_tensor(t, k, p, dtypes=floats)
        else:
            check_tensor(t, k, p, dtypes=(torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8))
        t = t.to(ref.dtype)
        check_tensor(t, k, p, finite=True)  # after the cast: a float64 value beyond float32's range is refused
        out[k] = t
    return out


def load_pretrained(path, model, *, allow_torchscript: bool = False) -> dict:
    """Loads the weights at ``path`` into ``model`` (an ``open_clip.CLIP``, in its dtype: float32) in place.

    Returns ``{"format": "safetensors" | "torch" | "torchscript", "n_tensors", "sha256", "wrapper": None |
    "state_dict" | "model", "stripped_prefix": bool}``. Raises :class:`CheckpointError` naming the file (and
    the keys) for a file that is not weights, needs pickled code, is TorchScript without the opt-in, or does
    not fit the model; the model is left untouched then.
    """
    p = Path(path)
    fmt = sniff_format(p)
    wrapper = None
    if fmt == "safetensors":
        tensors, _ = load_tensors(p)
    elif fmt == "torchscript":
        if not allow_torchscript:
            raise CheckpointError(f"{p} is a TorchScript archive (the format of OpenAI's released .pt files); "
                                  f"loading it runs code stored in the file, so it needs the explicit opt-in "
                                  f"{TORCHSCRIPT_OPTION}: true (or convert the file once to safetensors)")
        import torch

        try:
            tensors = dict(torch.jit.load(str(p), map_location="cpu").state_dict())
        except Exception as e:
            raise CheckpointError(f"{p}: unreadable TorchScript archive: {type(e).__name__}: {str(e)[:200]}") from None
    else:
        with open(p, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        tensors, wrapper = _state_dict_of(_torch_load(p, is_zip), p)
    stripped = bool(tensors) and all(k.startswith(DDP_PREFIX) for k in tensors)
    if stripped:
        tensors = {k[len(DDP_PREFIX):]: v for k, v in tensors.items()}
    _drop_openai_ints(tensors, model, p)
    _drop_derived_buffers(tensors, model, p)
    fitted = _fit(tensors, model, p)
    model.load_state_dict(fitted, strict=True)
    return {"format": fmt, "n_tensors": len(fitted), "sha256": file_sha256(p), "wrapper": wrapper,
            "stripped_prefix": stripped}


def _join(prefix: str, name: str) -> str:
    prefix = prefix.rstrip(".")
    return f"{prefix}.{name}" if prefix else name


def resnet_analysis_layers(prefix: str, visual) -> list[str]:
    """Module names (under ``prefix``, e.g. ``"visual"``) of the 3x3 convolution ``layerK.i.conv2`` of every
    bottleneck of open_clip's ModifiedResNet, in forward order: the layers BEC and the white-box re-activation
    attack read on a ResNet image tower (16 on RN50, whose stages have 3, 4, 6 and 3 blocks)."""
    from open_clip.modified_resnet import ModifiedResNet

    if not isinstance(visual, ModifiedResNet):
        raise TypeError(f"resnet_analysis_layers needs open_clip's ModifiedResNet, got {type(visual).__name__}")
    return [_join(prefix, f"layer{k}.{i}.conv2") for k in (1, 2, 3, 4)
            for i in range(len(getattr(visual, f"layer{k}")))]


def vit_analysis_layers(prefix: str, visual) -> list[str]:
    """Module names (under ``prefix``) of the residual blocks ``transformer.resblocks.i`` of open_clip's
    VisionTransformer, whose outputs (tokens as positions) stand in for a CNN's feature maps."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"vit_analysis_layers needs open_clip's VisionTransformer, got {type(visual).__name__}")
    return [_join(prefix, f"transformer.resblocks.{i}") for i in range(len(visual.transformer.resblocks))]
