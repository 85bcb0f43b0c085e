"""ImageNet-1K validation as the CLIP track's zero-shot test set (``data.dataset: imagenet``, source ``path``).

Two layouts of ``data.path``:

* class folders ``<wnid>/*.JPEG`` (as torchvision's ImageNet folder or most prepared copies): the classes are
  the wnid folders present in sorted order, which for all 1000 is the standard class order;
* a flat folder of images plus ``data.labels``: either Kaggle's ``LOC_val_solution.csv`` (header
  ``ImageId,PredictionString``; the first token of the prediction string is the wnid, the image is
  ``<ImageId>.JPEG``) or lines ``<file name> <class index 0..999>`` in the standard order.

Class names: the OpenAI CLIP names of the 1000 classes, ``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``
(imported lazily), with its two repeated names made distinct (the artifact needs distinct class names): the
second "missile" (n04008634, WordNet "projectile, missile") becomes "projectile" and the second "sunglasses"
(n04356056, "sunglasses, dark glasses, shades") becomes "dark glasses" -- this project's choice; prompts that
must match OpenAI's evaluation exactly can take the original list.

A partial copy (fewer than 1000 classes, e.g. a test fixture or a class subset) is a smaller zero-shot problem:
its classes are the ImageNet classes that have images, in standard order, named through the wnid list that
timm ships (``timm.data.ImageNetInfo``, installed with open_clip); without timm, class folders are named by
their wnid (and a wnid label file must list all 1000 classes). Only with all 1000 classes is the class list the
full one. ``test_per_class`` keeps the first N images of each class in file-name order. Every image has its
shorter side resized to ``image_size`` and the centre square kept (CLIP's evaluation preprocessing).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dormant.data.imagefiles import _first_per_class, _stack
from dormant.data.imageset import ImageSet
from dormant.errors import DataError

NUM_CLASSES = 1000
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
#: standard class index -> the distinct name used instead of OpenAI's repeated one (module docstring)
RENAMED = {744: "projectile", 837: "dark glasses"}
_MAX_NAMED = 5


def imagenet_class_names() -> list[str]:
    """The 1000 class names in standard order: OpenAI's CLIP names with the two repeats made distinct."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError as e:
        raise DataError(f"ImageNet class names come from open_clip (open_clip_torch), which is not installed: {e}") \
            from None
    names = [RENAMED.get(i, n) for i, n in enumerate(IMAGENET_CLASSNAMES)]
    if len(names) != NUM_CLASSES or len(set(names)) != NUM_CLASSES:
        raise DataError(f"open_clip's IMAGENET_CLASSNAMES has {len(names)} names, {len(set(names))} distinct after "
                        f"renaming; {NUM_CLASSES} distinct expected")
    return names


def imagenet_wnids() -> list[str] | None:
    """The 1000 wnids in standard order (sorted), from timm's ImageNet info; None when timm is not installed."""
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return None
    wnids = list(ImageNetInfo("imagenet-1k").label_names())
    if len(wnids) != NUM_CLASSES or wnids != sorted(set(wnids)):
        raise DataError(f"timm's ImageNet-1k wnid list has {len(wnids)} entries, not {NUM_CLASSES} sorted "
                        "distinct wnids")
    return wnids


def load_imagenet(path: str | os.PathLike, labels: str | os.PathLike | None = None, image_size: int = 224,
                  test_per_class: int | None = None) -> ImageSet:
    """The zero-shot test set: class folders under ``path`` (``labels`` None) or a flat folder plus the label
    file ``labels``; images resized (shorter side) and centre-cropped to ``image_size``."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"ImageNet validation folder not found: {root}")
    if labels is None:
        pairs, classes = _class_folders(root)
    else:
        pairs, classes = _flat_with_labels(root, Path(labels).expanduser())
    pairs = _first_per_class(pairs, test_per_class)
    x = _stack([(str(f), (lambda f=f: f)) for f, _ in pairs], image_size, crop=True)
    return ImageSet(x, torch.tensor([lab for _, lab in pairs], dtype=torch.int64), classes)


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES))


def _class_folders(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        raise DataError(f"{root}: no class folders (expected <wnid>/*.JPEG, or a flat folder with data.labels)")
    if len(folders) > NUM_CLASSES:
        raise DataError(f"{root}: {len(folders)} class folders, ImageNet-1K has {NUM_CLASSES}")
    wnids = [d.name for d in folders]
    table = imagenet_wnids()
    if table is not None:
        index = {w: i for i, w in enumerate(table)}
        unknown = [w for w in wnids if w not in index]
        if unknown:
            raise DataError(f"{root}: folder(s) {', '.join(unknown[:_MAX_NAMED])} are not ImageNet-1K wnids")
        names = imagenet_class_names()
        classes = [names[index[w]] for w in wnids]
    elif len(wnids) == NUM_CLASSES:
        classes = imagenet_class_names()
    else:
        classes = wnids  # no wnid -> index table offline: the folder names stand for the classes
    pairs = []
    for c, d in enumerate(folders):
        files = _images_in(d)
        if not files:
            raise DataError(f"{root}: class folder {d.name} holds no images")
        pairs += [(str(f), c) for f in files]
    return pairs, classes


def _read_label_file(labels: Path) -> list[tuple[int, str, str]]:
    """(line number, image reference, class) rows: class a wnid (LOC_val_solution.csv) or an index string."""
    if not labels.is_file():
        raise DataError(f"ImageNet label file not found: {labels}")
    try:
        lines = labels.read_text(encoding="utf-8-sig").splitlines()
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"cannot read ImageNet label file {labels}: {e}") from None
    rows = []
    loc = bool(lines) and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring")
    for ln, line in enumerate(lines[1:] if loc else lines, 2 if loc else 1):
        if not line.strip():
            continue
        if loc:
            image, _, pred = line.partition(",")
            tokens = pred.split()
            if not image.strip() or not tokens:
                raise DataError(f"{labels} line {ln}: expected ImageId,PredictionString (wnid first), got {line!r}")
            rows.append((ln, image.strip(), tokens[0]))
        else:
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= NUM_CLASSES:
                raise DataError(f"{labels} line {ln}: expected '<file name> <class index 0..999>', got {line!r}")
            rows.append((ln, parts[0], parts[1]))
    if not rows:
        raise DataError(f"ImageNet label file {labels} lists no images")
    return rows


def _flat_with_labels(root: Path, labels: Path) -> tuple[list[tuple[str, int]], list[str]]:
    rows = _read_label_file(labels)
    by_wnid = not rows[0][2].isdigit()
    if by_wnid:
        table = imagenet_wnids()
        seen = sorted({c for _, _, c in rows})
        if table is None:
            if len(seen) != NUM_CLASSES:
                raise DataError(f"{labels}: {len(seen)} wnids; without timm's wnid list a wnid label file must "
                                f"name all {NUM_CLASSES} classes (or use lines '<file name> <class index>')")
            table = seen
        index = {w: i for i, w in enumerate(table)}
        bad = next(((ln, c) for ln, _, c in rows if c not in index), None)
        if bad:
            raise DataError(f"{labels} line {bad[0]}: {bad[1]!r} is not an ImageNet-1K wnid")
        std = [(ln, ref, index[c]) for ln, ref, c in rows]
    else:
        std = [(ln, ref, int(c)) for ln, ref, c in rows]
    files = {f.name: f for f in _images_in(root)}
    stems = {f.stem: f for f in files.values()}
    found, missing, used = [], [], set()
    for ln, ref, c in std:
        f = files.get(ref) or (stems.get(ref) if by_wnid else None)
        if f is None:
            missing.append(f"line {ln}: {ref}")
            continue
        if f.name in used:
            raise DataError(f"{labels} line {ln}: image {ref} is listed twice")
        used.add(f.name)
        found.append((f, c))
    if missing:
        more = f" and {len(missing) - _MAX_NAMED} more" if len(missing) > _MAX_NAMED else ""
        raise DataError(f"{labels}: {len(missing)} listed image(s) not found in {root}: "
                        f"{'; '.join(missing[:_MAX_NAMED])}{more}")
    extra = sorted(set(files) - used)
    if extra:
        raise DataError(f"{root}: {len(extra)} image(s) not listed in {labels} (first: {extra[0]}); the label file "
                        f"must cover the folder")
    present = sorted({c for _, c in found})
    names = imagenet_class_names()
    position = {c: k for k, c in enumerate(present)}
    return [(str(f), position[c]) for f, c in found], [names[c] for c in present]
