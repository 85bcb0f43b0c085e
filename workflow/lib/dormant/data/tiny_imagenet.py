"""Tiny-ImageNet-200 (64x64, 200 classes) read from ``tiny-imagenet-200.zip`` without extracting it, or
from the extracted folder; classes are the sorted wnids of ``wnids.txt`` and the test split is ``val``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from dormant.data.imagefiles import _first_per_class, _stack
from dormant.data.imageset import ImageSet
from dormant.errors import DataError

TINY_PREFIX = "tiny-imagenet-200/"



TINY_SIZE = 64



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
