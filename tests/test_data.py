import tarfile

import pytest
import torch
from dormant.data.imageset import ImageSet, load_dataset, save_dataset, write_archive
from dormant.data.sources import DEMO_ARCHIVE, load_folder_or_archive, load_source, make_synthetic
from dormant.errors import DataError


def test_synthetic_is_seeded_and_learnable_shape():
    a = make_synthetic(num_classes=3, train_per_class=5, test_per_class=2, image_size=8, seed=1)
    b = make_synthetic(num_classes=3, train_per_class=5, test_per_class=2, image_size=8, seed=1)
    c = make_synthetic(num_classes=3, train_per_class=5, test_per_class=2, image_size=8, seed=2)
    assert torch.equal(a["train"].x, b["train"].x) and not torch.equal(a["train"].x, c["train"].x)
    assert a["train"].x.dtype == torch.uint8 and a["train"].x.shape == (15, 3, 8, 8)
    assert a["train"].y.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def test_archive_and_folder_layout_roundtrip(tmp_path, synthetic):
    arch = tmp_path / "d.tar"
    write_archive(synthetic, arch)
    got = load_folder_or_archive(arch, train_per_class=10, test_per_class=None)
    assert got["train"].classes == synthetic["train"].classes
    assert len(got["train"]) == 40 and len(got["test"]) == len(synthetic["test"])
    assert torch.equal(got["test"].y, synthetic["test"].y)
    # JPEG quality 75 keeps the coarse content of each image
    means = lambda s: s.x.float().mean((1, 2, 3))  # noqa: E731
    assert (means(got["test"]) - means(synthetic["test"])).abs().max() < 3
    png = tmp_path / "d_png.tar"
    write_archive(synthetic, png, fmt="png")
    exact = load_folder_or_archive(png)
    assert torch.equal(exact["train"].x, synthetic["train"].x) and torch.equal(exact["train"].y, synthetic["train"].y)
    folder = tmp_path / "f"
    with tarfile.open(arch) as t:
        t.extractall(folder, filter="data")
    got2 = load_folder_or_archive(folder, 10, None)
    assert torch.equal(got2["train"].x, got["train"].x)


def test_bad_dataset_inputs_name_the_file(tmp_path, synthetic):
    with pytest.raises(DataError, match="nope"):
        load_folder_or_archive(tmp_path / "nope.tar.gz")
    bad = tmp_path / "corrupt.tar.gz"
    bad.write_bytes(b"\x1f\x8b this is not a tarball")
    with pytest.raises(DataError, match="corrupt.tar.gz"):
        load_folder_or_archive(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        load_folder_or_archive(empty)
    arch = tmp_path / "d.tar"
    write_archive(synthetic, arch)
    with pytest.raises(DataError, match="fewer than"):
        load_folder_or_archive(arch, train_per_class=1000)


def test_corrupt_image_names_the_member(tmp_path):
    import io

    arch = tmp_path / "x.tar"
    with tarfile.open(arch, "w") as t:
        for split in ("train", "test"):
            info = tarfile.TarInfo(f"{split}/cat/0000.jpg")
            blob = b"not a jpeg"
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match="cat/0000.jpg"):
        load_folder_or_archive(arch)


def test_dataset_artifact_roundtrip(tmp_path, synthetic):
    save_dataset(synthetic, tmp_path / "d.safetensors", {"source": "synthetic"})
    got = load_dataset(tmp_path / "d.safetensors")
    assert torch.equal(got["train"].x, synthetic["train"].x) and got["test"].classes == synthetic["test"].classes


def test_shipped_demo_subset():
    assert DEMO_ARCHIVE.exists() and DEMO_ARCHIVE.stat().st_size < 5_000_000
    d = load_source({"source": "demo", "train_per_class": 3, "test_per_class": 2})
    assert d["train"].classes[:3] == ["airplane", "automobile", "bird"]
    assert d["train"].x.shape == (30, 3, 32, 32) and d["test"].x.shape == (20, 3, 32, 32)


def test_imageset_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2), ["a"])
