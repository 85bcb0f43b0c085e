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



def load_dataset(path: str | os.PathLike, device="cpu") -> dict[str, ImageSet]:
    from dormant.io import load_tensors

    tensors, meta = load_tensors(path)
    classes = meta["classes"]
    return {s: ImageSet(tensors[f"{s}_x"], tensors[f"{s}_y"], classes).to(device) for s in ("train", "test")}



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
