"""GTSRB (43 traffic-sign classes) through ``torchvision.datasets.GTSRB``'s on-disk layout under
``root/gtsrb``: every image is resized to ``image_size x image_size`` (bilinear), classes are named
``00000..00042``, and the images are decoded once into a preallocated uint8 tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dormant.data.imagefiles import _first_per_class, _stack
from dormant.data.imageset import ImageSet
from dormant.errors import DataError

GTSRB_CLASSES = [f"{c:05d}" for c in range(43)]



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
