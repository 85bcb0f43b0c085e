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
    """Images ``x`` (uint8, N x C x H x W), labels ``y`` (int64, N), the class names and, for image-caption pairs
    (the CLIP track's train split), one caption per image in ``text``. A caption never holds a line break (the
    artifact stores the captions joined by newlines); label -1 marks an image of unknown class (a pair read from
    a file), allowed only where captions exist (:func:`check_sets`)."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    text: list[str] | None = None

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError("one label per image expected")
        self.y = self.y.long()
        if self.text is not None:
            if not isinstance(self.text, list) or not all(isinstance(t, str) for t in self.text):
                raise ValueError("captions must be a list of strings")
            if len(self.text) != self.x.shape[0]:
                raise ValueError(f"one caption per image expected: {len(self.text)} captions, {self.x.shape[0]} images")
            broken = next((i for i, t in enumerate(self.text) if "\n" in t), None)
            if broken is not None:
                raise ValueError(f"caption {broken} holds a line break (captions are one line: see clean_caption)")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def subset(self, idx: torch.Tensor) -> ImageSet:
        """The images at ``idx`` (indices or a boolean mask), with their labels and captions."""
        idx = idx.to(self.x.device)
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        text = None if self.text is None else [self.text[i] for i in idx.tolist()]
        return ImageSet(self.x[idx], self.y[idx], self.classes, text)

    def to(self, device) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device), self.classes, self.text)


def clean_caption(caption: str) -> str:
    """A caption on one line: every run of whitespace (line breaks, tabs, Unicode separators) becomes one space,
    leading and trailing whitespace is dropped."""
    return " ".join(caption.split())


def encode_captions(text: list[str]) -> torch.Tensor:
    """Captions -> the artifact's ``train_text``: uint8 UTF-8 bytes of the captions joined by newlines."""
    raw = bytearray("\n".join(text).encode("utf-8"))
    return torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)


def decode_captions(t: torch.Tensor, path) -> list[str]:
    """The inverse of :func:`encode_captions`; bytes that are not UTF-8 are refused naming ``path``."""
    from dormant.errors import CheckpointError

    try:
        return bytes(t.cpu().numpy().tobytes()).decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: tensor 'train_text' is not UTF-8 text: {e}") from None


def save_dataset(sets: dict[str, ImageSet], path: str | os.PathLike, metadata: dict) -> None:
    """Writes the train and test splits; captions of the train split go to tensor ``train_text`` (see
    :func:`encode_captions`) with metadata ``"captions": true``. Only the train split may carry captions."""
    from dormant.io import save_tensors

    if sets["test"].text is not None:
        raise ValueError("only the train split carries captions; the test split is labelled images")
    tensors = {f"{s}_{k}": getattr(sets[s], k) for s in ("train", "test") for k in ("x", "y")}
    meta = {**metadata, "classes": sets["train"].classes}
    meta.pop("captions", None)
    if sets["train"].text is not None:
        tensors["train_text"] = encode_captions(sets["train"].text)
        meta["captions"] = True
    save_tensors(tensors, path, meta)


MAX_CLASSES = 100_000
SPLITS = ("train", "test")


def check_sets(sets: dict[str, ImageSet], source, *, allow_empty: bool = False) -> dict[str, ImageSet]:
    """A usable dataset: at least two classes, labels within them, every class with images in both splits, one
    image shape. Raises :class:`DataError` naming ``source`` otherwise. ``allow_empty``: a dataset whose label
    space is fixed by its definition (GTSRB's 43 classes) may leave classes without images.

    Image-caption pairs: only the train split may carry captions, and there label -1 ("class unknown", a pair
    read from a file) is allowed; a train split holding -1 labels need not cover every class (the classes are
    those of the zero-shot test set). ``sets`` may hold the test split alone (ImageNet: its train split comes
    from the pairs)."""
    from dormant.errors import DataError

    classes = sets["train" if "train" in sets else "test"].classes
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
        if s.text is not None and split != "train":
            raise DataError(f"{source}: the {split} split has captions; only the train split carries them")
        lo, hi = int(s.y.min()), int(s.y.max())
        unknown = lo == -1 and s.text is not None
        if (lo < 0 and not unknown) or hi >= len(classes):
            why = " (label -1, class unknown, needs captions)" if lo == -1 else ""
            raise DataError(f"{source}: {split} labels range {lo}..{hi}, outside the {len(classes)} classes{why}")
        counts = torch.bincount(s.y.cpu().clamp(min=-1) + 1, minlength=len(classes) + 1)[1:]
        empty = [classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty and not allow_empty and not unknown:
            raise DataError(f"{source}: class(es) {', '.join(map(str, empty[:5]))} have no {split} images")
    return sets


def load_dataset(path: str | os.PathLike, device="cpu") -> dict[str, ImageSet]:
    """The dataset artifact of ``prepare_data``, every field checked (the file is untrusted): with metadata
    ``"captions": true`` the train split's captions (tensor ``train_text``, one per image), else none."""
    from dormant.errors import CheckpointError, DataError
    from dormant.io import check_tensor, load_tensors, meta_field

    tensors, meta = load_tensors(path)
    classes = meta_field(meta, "classes", path, list)
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes) \
            or len(classes) > MAX_CLASSES:
        raise CheckpointError(f"{path}: metadata field 'classes' must be distinct class names (at most {MAX_CLASSES})")
    captions = meta.get("captions", False)
    if not isinstance(captions, bool):
        raise CheckpointError(f"{path}: metadata field 'captions' must be true or false, got {captions!r}")
    want = {f"{s}_{k}" for s in SPLITS for k in ("x", "y")} | ({"train_text"} if captions else set())
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
        text = None
        if s == "train" and captions:
            t = check_tensor(tensors["train_text"], "train_text", path, dtypes=(torch.uint8,), ndim=1)
            text = decode_captions(t, path)
            if len(text) != len(x):
                raise CheckpointError(f"{path}: train_text holds {len(text)} captions but train_x {len(x)} images")
        sets[s] = ImageSet(x, y, classes, text)
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
