"""Where a dataset comes from: ``load_source`` dispatches on the ``data`` section of params.yaml.

Sources (``data.source`` in params.yaml):

* ``demo``        -- the small real CIFAR-10 subset shipped in ``data/cifar10-demo.tar.gz`` (see data/README.md)
* ``path``        -- a folder or a .tar/.tar.gz/.tgz archive in the ``{train,test}/<class>/*.jpg|png`` layout
* ``torchvision`` -- ``torchvision.datasets.CIFAR10`` (downloads into ``data.root``)
* ``synthetic``   -- a seeded, learnable synthetic dataset for unit tests

``data.dataset`` picks the dataset (default ``cifar10``; ``synthetic`` goes with source ``synthetic``):

* ``gtsrb``         -- source ``torchvision`` downloads GTSRB into ``data.root``; source ``path`` reads
  torchvision's ``gtsrb/`` layout under ``data.path`` (images resized to 32x32; see gtsrb.py)
* ``tiny_imagenet`` -- source ``path`` only: ``tiny-imagenet-200.zip`` or its extracted folder (test = val)
* ``imagenet``      -- source ``path`` only: ImageNet-1K validation, the CLIP track's zero-shot test set
  (class folders, or a flat folder plus ``data.labels``; shorter side resized to ``data.image_size``, default
  224, then centre-cropped; see imagenet.py). :func:`load_source` returns ``{"test": ImageSet}`` alone for
  it: the train split is the image-caption pairs (``dormant.data.pairs.read_pairs``, labels -1)

Whatever the source, the result is an :class:`ImageSet` pair (train, test) of ``uint8 [N, C, H, W]``
images and ``int64 [N]`` labels that the pipeline writes once to a safetensors file and keeps on the
compute device for the rest of its life: no per-sample Python or PIL in any hot loop.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from dormant.data.imageset import ImageSet
from dormant.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[4]



DEMO_ARCHIVE = REPO_ROOT / "data" / "cifar10-demo.tar.gz"



IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")



def _decode(blob: bytes, name: str) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 RGB tensor C x H x W (Pillow; torchvision's decoders are deprecated)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            arr = np.asarray(img.convert("RGB"))
    except Exception as e:  # corrupt or non-image file
        raise DataError(f"cannot decode image {name}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()



def _split_of(relpath: str) -> tuple[str, str] | None:
    """'train/cat/0001.jpg' -> ('train', 'cat'); anything else -> None."""
    parts = Path(relpath).parts
    # tolerate one leading folder (e.g. 'cifar10/train/cat/x.jpg')
    for k in range(len(parts) - 2):
        if parts[k] in ("train", "test") and len(parts) - k == 3:
            return parts[k], parts[k + 1]
    return None



def _declared(relpaths) -> dict[str, set[str]]:
    """Class folders present in the layout (also empty ones): split -> class names."""
    out: dict[str, set[str]] = {"train": set(), "test": set()}
    for rel in relpaths:
        sc = _split_of(f"{rel.rstrip('/')}/x")
        if sc is not None:
            out[sc[0]].add(sc[1])
    return out


def _collect(entries, source: str, per_class: dict[str, int | None],
             declared: dict[str, set[str]] | None = None) -> dict[str, ImageSet]:
    """entries: iterable of (relpath, read_fn). Builds train/test ImageSets from the class-folder layout;
    ``declared``: class folders seen (a class folder without images is an error, not a dropped class)."""
    files: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for rel, read in entries:
        if not rel.lower().endswith(IMAGE_SUFFIXES):
            continue
        sc = _split_of(rel)
        if sc is None:
            continue
        split, cls = sc
        files[split].setdefault(cls, []).append((rel, read))
    for split in ("train", "test"):
        if not files[split]:
            raise DataError(f"{source}: no images found under '{split}/<class>/' "
                            "(expected the {train,test}/<class>/*.jpg layout)")
    for split, names in (declared or {}).items():
        empty = sorted(names - set(files[split]))
        if empty:
            raise DataError(f"{source}: class folder(s) {', '.join(f'{split}/{c}' for c in empty[:5])} hold no images")
    classes = sorted(files["train"])
    if sorted(files["test"]) != classes:
        raise DataError(f"{source}: train and test class folders differ: {classes} vs {sorted(files['test'])}")
    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        limit = per_class.get(split)
        for ci, cls in enumerate(classes):
            items = sorted(files[split][cls], key=lambda t: t[0])
            if limit is not None:
                if len(items) < limit:
                    raise DataError(f"{source}: {split}/{cls} has {len(items)} images, "
                                    f"fewer than the {limit} asked for")
                items = items[:limit]
            for rel, read in items:
                xs.append(_decode(read(), f"{source}:{rel}"))
            ys += [ci] * len(items)
        shapes = {tuple(t.shape) for t in xs}
        if len(shapes) != 1:
            raise DataError(f"{source}: images of different sizes in {split}: {sorted(shapes)[:3]}")
        out[split] = ImageSet(torch.stack(xs), torch.tensor(ys, dtype=torch.int64), classes)
    return out



def load_folder_or_archive(path: str | os.PathLike, train_per_class=None,
                           test_per_class=None) -> dict[str, ImageSet]:
    """Reads the ``{train,test}/<class>/*`` layout from a folder or a tar archive (first N per class, in file order)."""
    p = Path(path)
    per_class = {"train": train_per_class, "test": test_per_class}
    if not p.exists():
        raise DataError(f"dataset not found: {p}")
    if p.is_dir():
        found = sorted(p.rglob("*"))
        entries = ((str(f.relative_to(p)), f.read_bytes) for f in found if f.is_file())
        declared = _declared(str(f.relative_to(p)) for f in found if f.is_dir())
        return _collect(entries, str(p), per_class, declared)
    try:
        with tarfile.open(p, "r:*") as tar:
            all_members = tar.getmembers()
            members = [m for m in all_members if m.isfile()]
            blobs = {m.name: tar.extractfile(m).read() for m in members if m.name.lower().endswith(IMAGE_SUFFIXES)}
            declared = _declared(m.name for m in all_members if m.isdir())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"dataset archive {p} is unreadable or corrupt: {e}") from e
    return _collect(((k, (lambda b=b: b)) for k, b in blobs.items()), str(p), per_class, declared)



def load_torchvision_cifar10(root: str, train_per_class=None, test_per_class=None) -> dict[str, ImageSet]:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` (downloads into ``root`` if absent)."""
    from torchvision.datasets import CIFAR10

    out = {}
    for split, limit in (("train", train_per_class), ("test", test_per_class)):
        ds = CIFAR10(root=root, train=(split == "train"), download=True)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor(ds.targets, dtype=torch.int64)
        if limit is not None:
            keep = torch.cat([torch.nonzero(y == c).flatten()[:limit] for c in range(10)]).sort().values
            x, y = x[keep], y[keep]
        out[split] = ImageSet(x, y, list(ds.classes))
    return out



def make_synthetic(num_classes: int = 10, train_per_class: int = 100, test_per_class: int = 20,
                   image_size: int = 32, seed: int = 0, noise: float = 40.0) -> dict[str, ImageSet]:
    """A seeded, learnable dataset: each class is a smooth random prototype image plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(num_classes, 3, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
    protos = 40 + 175 * protos  # keep away from 0/255 so triggers are visible
    out = {}
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        y = torch.arange(num_classes).repeat_interleave(n)
        x = protos[y] + noise * torch.randn(len(y), 3, image_size, image_size, generator=g)
        out[split] = ImageSet(x.round().clamp(0, 255).to(torch.uint8), y, [f"class{c}" for c in range(num_classes)])
    return out



def _load_other_dataset(dataset: str, cfg: dict) -> dict[str, ImageSet]:
    """GTSRB, Tiny-ImageNet and ImageNet (their own modules) by ``cfg['source']``."""
    from dormant.data.gtsrb import load_gtsrb
    from dormant.data.tiny_imagenet import load_tiny_imagenet

    src = cfg["source"]
    tr, te = cfg.get("train_per_class"), cfg.get("test_per_class")
    if src == "path" and not cfg.get("path"):
        raise DataError(f"data.path must be set when data.source is 'path' (data.dataset: {dataset})")
    if dataset == "imagenet":
        from dormant.data.imagenet import load_imagenet

        if src != "path":
            raise DataError("data.source: ImageNet validation is read from a folder only (source: path)")
        labels = os.path.expanduser(cfg["labels"]) if cfg.get("labels") else None
        return {"test": load_imagenet(os.path.expanduser(cfg["path"]), labels, cfg.get("image_size") or 224, te)}
    if dataset == "gtsrb":
        size = cfg.get("image_size") or 32
        if src == "torchvision":
            root = os.path.expanduser(cfg.get("root") or "data/torchvision")
            return load_gtsrb(root, image_size=size, download=True, train_per_class=tr, test_per_class=te)
        if src == "path":
            return load_gtsrb(os.path.expanduser(cfg["path"]), image_size=size, download=False,
                                      train_per_class=tr, test_per_class=te)
    elif dataset == "tiny_imagenet":
        if src == "torchvision":
            raise DataError("data.source: torchvision has no Tiny-ImageNet dataset; set data.source: path and "
                            "data.path to tiny-imagenet-200.zip (or its extracted folder)")
        if src == "path":
            return load_tiny_imagenet(os.path.expanduser(cfg["path"]), train_per_class=tr, test_per_class=te)
    else:
        raise DataError(f"data.dataset: unknown dataset {dataset!r} (cifar10, synthetic, gtsrb, tiny_imagenet, "
                        "imagenet)")
    raise DataError(f"data.source: {src!r} is not available for data.dataset {dataset!r} (use torchvision or path)")



def load_source(cfg: dict) -> dict[str, ImageSet]:
    """Dispatch on ``cfg['dataset']`` (default cifar10) and ``cfg['source']`` (the ``data`` section of params.yaml);
    the result is checked (:func:`dormant.data.imageset.check_sets`: two classes or more, none empty, labels in
    range). Returns ``{"train", "test"}``, except for dataset ``imagenet``: ``{"test"}`` alone (a zero-shot test
    set; the caller builds the train split from image-caption pairs)."""
    from dormant.data.imageset import check_sets

    where = cfg.get("path") if cfg.get("source") == "path" else f"data.source {cfg.get('source')!r}"
    return check_sets(_load_source(cfg), where, allow_empty=fixed_label_space(cfg))


def fixed_label_space(cfg: dict) -> bool:
    """GTSRB's 43 classes are its definition: a subset may leave some without images."""
    return (cfg.get("dataset") or "cifar10") == "gtsrb"


def _load_source(cfg: dict) -> dict[str, ImageSet]:
    dataset = cfg.get("dataset") or "cifar10"
    if dataset not in ("cifar10", "synthetic"):
        return _load_other_dataset(dataset, cfg)
    src = cfg["source"]
    tr, te = cfg.get("train_per_class"), cfg.get("test_per_class")
    if src == "demo":
        if not DEMO_ARCHIVE.exists():
            raise DataError(f"the shipped demo subset is missing: {DEMO_ARCHIVE}")
        return load_folder_or_archive(DEMO_ARCHIVE, tr, te)
    if src == "path":
        if not cfg.get("path"):
            raise DataError("data.path must be set when data.source is 'path'")
        return load_folder_or_archive(os.path.expanduser(cfg["path"]), tr, te)
    if src == "torchvision":
        return load_torchvision_cifar10(os.path.expanduser(cfg.get("root") or "data/torchvision"), tr, te)
    if src == "synthetic":
        s = cfg.get("synthetic") or {}
        return make_synthetic(
            num_classes=s.get("num_classes", 10),
            train_per_class=tr or 100,
            test_per_class=te or 20,
            image_size=s.get("image_size", 32),
            seed=s.get("seed", 0),
        )
    raise DataError(f"data.source: unknown source {src!r} (demo, path, torchvision, synthetic)")
