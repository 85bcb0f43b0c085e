"""Shared helpers of the image-file readers (GTSRB, Tiny-ImageNet, ImageNet, image-caption pairs): open as RGB
at a size (a plain resize, or CLIP's shorter-side resize + centre crop), stack into one preallocated uint8
tensor, keep the first N images per class.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch

from dormant.errors import DataError


def short_side_crop_box(width: int, height: int, size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """CLIP's evaluation preprocessing (Radford et al. 2021; torchvision's ``Resize(size)`` + ``CenterCrop(size)``
    conventions): the shorter side becomes ``size``, the longer ``int(size * long / short)``; then the centred
    ``size`` x ``size`` window, offsets ``round((side - size) / 2)``. Returns ((new width, new height),
    (left, top, right, bottom))."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return (new_w, new_h), (left, top, left + size, top + size)


def _open_rgb(src, name: str, size: int | None, crop: bool = False):
    """Opens a path or bytes with Pillow as an RGB HxWx3 uint8 array, optionally resized: to ``size`` squared
    (bilinear), or with ``crop`` the shorter side to ``size`` (bicubic, as CLIP) and the centre square kept."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
            img = img.convert("RGB")
            if size is not None and crop:
                new, box = short_side_crop_box(img.size[0], img.size[1], size)
                if new != img.size:
                    img = img.resize(new, Image.BICUBIC)
                if box != (0, 0) + new:
                    img = img.crop(box)
            elif size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.array(img)
    except Exception as e:  # missing, truncated or non-image file
        raise DataError(f"cannot decode image {name}: {e}") from e



def _stack(items: list[tuple[str, Callable[[], object]]], size: int | None, expect: int | None = None,
           crop: bool = False) -> torch.Tensor:
    """Decodes ``(name, read)`` items into one uint8 N x 3 x H x W tensor (all images must share a size);
    ``crop``: shorter side to ``size`` and centre crop (:func:`short_side_crop_box`)."""
    x = None
    for i, (name, read) in enumerate(items):
        arr = _open_rgb(read(), name, size, crop)
        if x is None:
            h, w = arr.shape[:2]
            if expect is not None and (h, w) != (expect, expect):
                raise DataError(f"image {name} is {w}x{h}, expected {expect}x{expect}")
            x = torch.empty((len(items), 3, h, w), dtype=torch.uint8)
        if arr.shape[:2] != tuple(x.shape[2:]):
            raise DataError(f"image {name} is {arr.shape[1]}x{arr.shape[0]}, "
                            f"expected {x.shape[3]}x{x.shape[2]} like the others")
        x[i] = torch.from_numpy(arr).permute(2, 0, 1)
    if x is None:
        return torch.empty((0, 3, size or 0, size or 0), dtype=torch.uint8)
    return x



def _first_per_class(pairs: list[tuple[str, int]], limit: int | None) -> list[tuple[str, int]]:
    """Sorts ``(name, label)`` by name and keeps at most ``limit`` per label (None = all), in label order."""
    by_class: dict[int, list[str]] = {}
    for name, lab in sorted(pairs):
        by_class.setdefault(lab, []).append(name)
    return [(n, lab) for lab in sorted(by_class) for n in by_class[lab][:limit]]
