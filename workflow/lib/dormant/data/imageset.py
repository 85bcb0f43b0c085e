"""The dataset artifact: an :class:`ImageSet` of resident ``uint8 [N, C, H, W]`` images and ``int64 [N]``
labels, written once to safetensors by ``prepare_data`` and kept on the compute device by every later stage
(no per-sample Python or PIL in any hot loop). Also the archive writer of the demo subset.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Images ``x`` (uint8, N x C x H x W), labels ``y`` (int64, N) and the class names."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError("one label per image expected")
        self.y = self.y.long()

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def subset(self, idx: torch.Tensor) -> ImageSet:
        idx = idx.to(self.x.device)
        return ImageSet(self.x[idx], self.y[idx], self.classes)

    def to(self, device) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device), self.classes)



def save_dataset(sets: dict[str, ImageSet], path: str | os.PathLike, metadata: dict) -> None:
    from dormant.io import save_tensors

    tensors = {f"{s}_{k}": getattr(sets[s], k) for s in ("train", "test") for k in ("x", "y")}
    save_tensors(tensors, path, {**metadata, "classes": sets["train"].classes})



MAX_CLASSES = 100_000
SPLITS = ("train", "test")


def check_sets(sets: dict[str, ImageSet], source, *, allow_empty: bool = False) -> dict[str, ImageSet]:
    """A usable dataset: at least two classes, labels within them, every class with images in both splits, one
    image shape. Raises :class:`DataError` naming ``source`` otherwise. ``allow_empty``: a dataset whose label
    space is fixed by its definition (GTSRB's 43 classes) may leave classes without images."""
    from dormant.errors import DataError

    classes = sets["train"].classes
    if len(classes) < 2:
        raise DataError(f"{source}: {len(classes)} class(es) {classes[:3]}; a classification dataset needs at least 2")
    shapes = {s.image_shape for s in sets.values()}
    if len(shapes) != 1:
        raise DataError(f"{source}: train and test images differ in shape: {sorted(shapes)}")
    for split, s in sets.items():
        if s.classes != classes:
            raise DataError(f"{source}: the {split} split has other classes than the train split")
        if len(s) == 0:
            raise DataError(f"{source}: the {split} split has no images")
        lo, hi = int(s.y.min()), int(s.y.max())
        if lo < 0 or hi >= len(classes):
            raise DataError(f"{source}: {split} labels range {lo}..{hi}, outside the {len(classes)} classes")
        counts = torch.bincount(s.y.cpu(), minlength=len(classes))
        empty = [classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty and not allow_empty:
            raise DataError(f"{source}: class(es) {', '.join(map(str, empty[:5]))} have no {split} images")
    return sets


def load_dataset(path: str | os.PathLike, device="cpu") -> dict[str, ImageSet]:
    """The dataset artifact of ``prepare_data``, every field checked (the file is untrusted)."""
    from dormant.errors import CheckpointError, DataError
    from dormant.io import check_tensor, load_tensors, meta_field

    tensors, meta = load_tensors(path)
    classes = meta_field(meta, "classes", path, list)
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes) \
            or len(classes) > MAX_CLASSES:
        raise CheckpointError(f"{path}: metadata field 'classes' must be distinct class names (at most {MAX_CLASSES})")
    want = {f"{s}_{k}" for s in SPLITS for k in ("x", "y")}
    if set(tensors) != want:
        raise CheckpointError(f"{path}: tensors {sorted(tensors)} are not the dataset's {sorted(want)}")
    sets = {}
    for s in SPLITS:
        x = check_tensor(tensors[f"{s}_x"], f"{s}_x", path, dtypes=(torch.uint8,), ndim=4)
        y = check_tensor(tensors[f"{s}_y"], f"{s}_y", path, dtypes=(torch.int64,), ndim=1)
        if len(x) != len(y):
            raise CheckpointError(f"{path}: {s}_x holds {len(x)} images but {s}_y {len(y)} labels")
        if x.shape[1] not in (1, 3):
            raise CheckpointError(f"{path}: {s}_x has {x.shape[1]} channels (1 or 3 expected)")
        sets[s] = ImageSet(x, y, classes)
    try:
        check_sets(sets, path, allow_empty=meta.get("allow_empty_classes") is True)
    except DataError as e:
        raise CheckpointError(str(e)) from None
    return {s: v.to(device) for s, v in sets.items()}


def encode_image(img: torch.Tensor, fmt: str = "jpg", quality: int = 75) -> bytes:
    """uint8 C x H x W -> JPEG (quality 75, like the CIFAR-10 JPEG copy) or lossless PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
    pil.save(buf, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": quality} if fmt == "jpg" else {}))
    return buf.getvalue()



def write_archive(sets: dict[str, ImageSet], path: str | os.PathLike, fmt: str = "jpg") -> None:
    """Writes ImageSets as a tar of ``{split}/{class}/{NNNN}.{fmt}`` (test fixtures, small exports)."""
    with tarfile.open(path, "w") as tar:
        for split, s in sets.items():
            counts: dict[int, int] = {}
            for img, lab in zip(s.x, s.y.tolist()):
                i = counts.get(lab, 0)
                counts[lab] = i + 1
                blob = encode_image(img, fmt)
                info = tarfile.TarInfo(f"{split}/{s.classes[lab]}/{i:04d}.{fmt}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
