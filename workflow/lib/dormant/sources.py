"""Readers for datasets beyond CIFAR-10: GTSRB and Tiny-ImageNet-200.

Both return ``{"train": ImageSet, "test": ImageSet}`` of ``uint8 [N, 3, H, W]`` images, decoded once
with Pillow into a preallocated tensor.

* GTSRB is read through ``torchvision.datasets.GTSRB`` (its on-disk layout under ``root/gtsrb``); every
  image is resized to ``image_size x image_size`` (bilinear) and the 43 classes are named ``00000..00042``.
* Tiny-ImageNet-200 is read from ``tiny-imagenet-200.zip`` (without extracting it) or from the extracted
  folder; classes are the sorted wnids of ``wnids.txt`` and the test split is ``val``.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .data import ImageSet
from .errors import DataError

GTSRB_CLASSES = [f"{c:05d}" for c in range(43)]
TINY_PREFIX = "tiny-imagenet-200/"
TINY_SIZE = 64


def _open_rgb(src, name: str, size: int | None):
    """Opens a path or bytes with Pillow as an RGB HxWx3 uint8 array, optionally resized (bilinear)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.array(img)
    except Exception as e:  # missing, truncated or non-image file
        raise DataError(f"cannot decode image {name}: {e}") from e


def _stack(items: list[tuple[str, Callable[[], object]]], size: int | None, expect: int | None = None) -> torch.Tensor:
    """Decodes ``(name, read)`` items into one uint8 N x 3 x H x W tensor (all images must share a size)."""
    x = None
    for i, (name, read) in enumerate(items):
        arr = _open_rgb(read(), name, size)
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


# --------------------------------------------------------------------------- GTSRB


def load_gtsrb(root: str | os.PathLike, image_size: int = 32, download: bool = False,
               train_per_class: int | None = None, test_per_class: int | None = None) -> dict[str, ImageSet]:
    """GTSRB via ``torchvision.datasets.GTSRB(root, split, download)``, resized to ``image_size`` squared.

    Train labels come from the class folder name (``Training/000NN``), test labels from
    ``gtsrb/GT-final_test.csv``. ``*_per_class`` keeps the first N images per class in file order.
    """
    from torchvision.datasets import GTSRB

    root = Path(root)
    base = root / "gtsrb" / "GTSRB"
    out = {}
    for split, limit in (("train", train_per_class), ("test", test_per_class)):
        folder = base / ("Training" if split == "train" else "Final_Test/Images")
        if not download and not folder.is_dir():
            raise DataError(f"GTSRB {split} split not found: {folder} is missing "
                            f"(data.root/path must hold torchvision's gtsrb/ folder, or use data.source: torchvision)")
        try:
            ds = GTSRB(root=str(root), split=split, download=download)
        except Exception as e:  # failed download, missing GT-final_test.csv, malformed csv ...
            raise DataError(f"GTSRB {split} split under {root / 'gtsrb'} cannot be read: {e}") from e
        samples = list(getattr(ds, "_samples", None) or [])
        if split == "train":
            # torchvision numbers the folders present; the folder name is the true class id
            pairs = [(p, int(Path(p).parent.name)) for p, _ in samples]
        else:
            pairs = [(p, int(lab)) for p, lab in samples]
        bad = [p for p, lab in pairs if not 0 <= lab < len(GTSRB_CLASSES)]
        if bad:
            raise DataError(f"GTSRB {split}: class id out of range 0..42 for {bad[0]}")
        if not pairs:
            raise DataError(f"GTSRB {split}: no images found under {folder}")
        pairs = _first_per_class(pairs, limit)
        x = _stack([(p, (lambda p=p: p)) for p, _ in pairs], image_size)
        y = torch.tensor([lab for _, lab in pairs], dtype=torch.int64)
        out[split] = ImageSet(x, y, list(GTSRB_CLASSES))
    return out


# --------------------------------------------------------------------------- Tiny-ImageNet-200


class _TinyFiles:
    """Uniform read access to Tiny-ImageNet files (relative to the ``tiny-imagenet-200`` folder) in a zip or folder."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.dir = path / TINY_PREFIX.rstrip("/") if (path / TINY_PREFIX / "wnids.txt").is_file() else path
            self.names = sorted(str(f.relative_to(self.dir).as_posix()) for f in self.dir.rglob("*") if f.is_file())
        else:
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"Tiny-ImageNet archive {path} is unreadable or not a zip: {e}") from e
            full = [n for n in self.zip.namelist() if not n.endswith("/")]
            prefix = TINY_PREFIX if any(n.startswith(TINY_PREFIX) for n in full) else ""
            self.member = {n[len(prefix):]: n for n in full if n.startswith(prefix)}
            self.names = sorted(self.member)

    def where(self, rel: str) -> str:
        return f"{self.path}:{rel}" if self.zip is not None else str(self.dir / rel)

    def read(self, rel: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(self.member[rel])
            return (self.dir / rel).read_bytes()
        except (KeyError, OSError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot read {self.where(rel)}: {e}") from e

    def close(self):
        if self.zip is not None:
            self.zip.close()


def load_tiny_imagenet(path: str | os.PathLike, train_per_class: int | None = None,
                       test_per_class: int | None = None) -> dict[str, ImageSet]:
    """Tiny-ImageNet-200 (64x64 RGB, 200 classes = sorted wnids) from its zip or extracted folder; test = val.

    ``*_per_class`` keeps the first N images per class in sorted file order (None = all).
    """
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise DataError(f"Tiny-ImageNet not found: {p}")
    files = _TinyFiles(p)
    try:
        names = set(files.names)
        if "wnids.txt" not in names:
            raise DataError(f"Tiny-ImageNet: {files.where('wnids.txt')} is missing")
        wnids = sorted({w.strip() for w in files.read("wnids.txt").decode().splitlines() if w.strip()})
        index = {w: i for i, w in enumerate(wnids)}

        train = []
        for rel in files.names:
            parts = rel.split("/")
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and rel.upper().endswith(".JPEG"):
                if parts[1] not in index:
                    raise DataError(f"Tiny-ImageNet: {files.where(rel)} is in a class folder not in wnids.txt")
                train.append((rel, index[parts[1]]))

        ann = "val/val_annotations.txt"
        if ann not in names:
            raise DataError(f"Tiny-ImageNet: {files.where(ann)} is missing")
        test = []
        for ln, line in enumerate(files.read(ann).decode().splitlines(), 1):
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 2:
                raise DataError(f"Tiny-ImageNet: {files.where(ann)} line {ln} is malformed: {line!r}")
            if cols[1] not in index:
                raise DataError(f"Tiny-ImageNet: {files.where(ann)} line {ln}: unknown wnid {cols[1]!r}")
            test.append((f"val/images/{cols[0]}", index[cols[1]]))

        out = {}
        for split, pairs, limit in (("train", train, train_per_class), ("test", test, test_per_class)):
            if not pairs:
                raise DataError(f"Tiny-ImageNet: no {split} images found in {p}")
            pairs = _first_per_class(pairs, limit)
            items = [(files.where(rel), (lambda rel=rel: files.read(rel))) for rel, _ in pairs]
            x = _stack(items, None, expect=TINY_SIZE)
            out[split] = ImageSet(x, torch.tensor([lab for _, lab in pairs], dtype=torch.int64), list(wnids))
        return out
    finally:
        files.close()
