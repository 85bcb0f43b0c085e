"""GTSRB and Tiny-ImageNet readers on small fabricated files in the real on-disk formats."""

import zipfile

import pytest
import torch
from dormant.data.gtsrb import load_gtsrb
from dormant.data.sources import load_source
from dormant.data.tiny_imagenet import load_tiny_imagenet
from dormant.errors import DataError

# the GTSRB reader goes through torchvision.datasets: pay its one-time import (~2 s) at collection, not in a test
pytest.importorskip("torchvision.datasets")
from PIL import Image

# --------------------------------------------------------------------------- GTSRB fixtures

# class id -> solid colour; train folders hold 3 images, 2 sizes (30x35 and 40x41) so the resize is exercised
GTSRB_TRAIN = {0: (200, 30, 30), 7: (30, 200, 30), 42: (30, 30, 200)}
# test files in CSV order (deliberately not sorted by class): filename, class id
GTSRB_TEST = [("00000.ppm", 7), ("00001.ppm", 42), ("00002.ppm", 7), ("00003.ppm", 0), ("00004.ppm", 42)]


def _gtsrb_colour(cls: int, i: int) -> tuple[int, int, int]:
    """Solid colour of image i of a class: the class colour, shifted per image so file order is checkable."""
    r, g, b = GTSRB_TRAIN[cls]
    return (r, g, min(255, b + 10 * i))


def _write_gtsrb(root):
    base = root / "gtsrb"
    for cls in GTSRB_TRAIN:
        d = base / "GTSRB" / "Training" / f"{cls:05d}"
        d.mkdir(parents=True)
        for i in range(3):
            size = (30, 35) if i % 2 == 0 else (40, 41)
            Image.new("RGB", size, _gtsrb_colour(cls, i)).save(d / f"00000_{i:05d}.ppm")
        (d / f"GT-{cls:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    d = base / "GTSRB" / "Final_Test" / "Images"
    d.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for k, (name, cls) in enumerate(GTSRB_TEST):
        size = (33, 30) if k % 2 else (45, 50)
        Image.new("RGB", size, GTSRB_TRAIN[cls]).save(d / name)
        rows.append(f"{name};{size[0]};{size[1]};5;5;{size[0] - 5};{size[1] - 5};{cls}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def gtsrb_root(tmp_path):
    return _write_gtsrb(tmp_path / "tv")


def _near(img: torch.Tensor, rgb, tol: int) -> bool:
    """All pixels of a C x H x W uint8 image within tol of the colour."""
    return bool((img.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max() <= tol)


def test_gtsrb_shapes_labels_colours(gtsrb_root):
    d = load_gtsrb(gtsrb_root)
    tr, te = d["train"], d["test"]
    assert tr.x.shape == (9, 3, 32, 32) and tr.x.dtype == torch.uint8
    assert te.x.shape == (5, 3, 32, 32) and te.x.dtype == torch.uint8
    assert tr.classes == [f"{c:05d}" for c in range(43)] and te.num_classes == 43
    assert tr.y.tolist() == [0, 0, 0, 7, 7, 7, 42, 42, 42]
    for j, (cls, i) in enumerate((c, i) for c in GTSRB_TRAIN for i in range(3)):
        assert _near(tr.x[j], _gtsrb_colour(cls, i), 1), (cls, i)
    # test labels from the CSV, grouped by class with file order inside a class
    assert te.y.tolist() == [0, 7, 7, 42, 42]
    for img, lab in zip(te.x, te.y.tolist()):
        assert _near(img, GTSRB_TRAIN[lab], 1)


def test_gtsrb_per_class(gtsrb_root):
    d = load_gtsrb(gtsrb_root, image_size=16, train_per_class=2, test_per_class=1)
    assert d["train"].x.shape == (6, 3, 16, 16)
    assert d["train"].y.tolist() == [0, 0, 7, 7, 42, 42]
    assert _near(d["train"].x[1], _gtsrb_colour(0, 1), 1)  # first two in file order
    assert d["test"].y.tolist() == [0, 7, 42]


def test_gtsrb_missing_folder(tmp_path):
    with pytest.raises(DataError, match="Training"):
        load_gtsrb(tmp_path / "nowhere")
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load_gtsrb(tmp_path / "nowhere")


def test_gtsrb_load_source(gtsrb_root):
    a = load_source({"dataset": "gtsrb", "source": "path", "path": str(gtsrb_root), "root": None,
                     "train_per_class": 1, "test_per_class": None})
    assert a["train"].y.tolist() == [0, 7, 42] and len(a["test"]) == 5
    # source torchvision: root, download=True finds the files present and downloads nothing
    b = load_source({"dataset": "gtsrb", "source": "torchvision", "path": None, "root": str(gtsrb_root),
                     "train_per_class": 1, "test_per_class": None})
    assert torch.equal(a["train"].x, b["train"].x) and torch.equal(a["test"].y, b["test"].y)


# --------------------------------------------------------------------------- Tiny-ImageNet fixtures

WNIDS = ["n09999999", "n01443537", "n02123045"]  # unsorted in the file on purpose
TINY_COLOUR = {"n01443537": (220, 40, 40), "n02123045": (40, 220, 40), "n09999999": (40, 40, 220)}
TINY_VAL = [("val_0.JPEG", "n02123045"), ("val_1.JPEG", "n09999999"), ("val_2.JPEG", "n01443537"),
            ("val_3.JPEG", "n02123045"), ("val_4.JPEG", "n01443537"), ("val_5.JPEG", "n09999999")]
GREY = 128  # train/n02123045/images/n02123045_1.JPEG is a greyscale JPEG


def _jpeg(folder, name, rgb=None, grey=None):
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", (64, 64), grey) if grey is not None else Image.new("RGB", (64, 64), rgb)
    img.save(folder / name, format="JPEG", quality=95)


def _write_tiny(root):
    t = root / "tiny-imagenet-200"
    t.mkdir(parents=True)
    (t / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for w in WNIDS:
        (t / "train" / w).mkdir(parents=True)
        (t / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(3):
            if w == "n02123045" and i == 1:
                _jpeg(t / "train" / w / "images", f"{w}_{i}.JPEG", grey=GREY)
            else:
                _jpeg(t / "train" / w / "images", f"{w}_{i}.JPEG", rgb=TINY_COLOUR[w])
    for name, w in TINY_VAL:
        _jpeg(t / "val" / "images", name, rgb=TINY_COLOUR[w])
    (t / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{w}\t0\t0\t63\t63\n" for name, w in TINY_VAL))
    return t


def _zip_tree(folder, dest, prefix):
    with zipfile.ZipFile(dest, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, prefix + f.relative_to(folder).as_posix() + ("/" if f.is_dir() else ""))
    return dest


@pytest.fixture
def tiny(tmp_path):
    return _write_tiny(tmp_path / "src")


def test_tiny_imagenet_folder(tiny):
    d = load_tiny_imagenet(tiny)
    tr, te = d["train"], d["test"]
    classes = sorted(WNIDS)
    assert tr.classes == classes and te.classes == classes
    assert tr.x.shape == (9, 3, 64, 64) and tr.x.dtype == torch.uint8
    assert te.x.shape == (6, 3, 64, 64) and te.x.dtype == torch.uint8
    assert tr.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for j, lab in enumerate(tr.y.tolist()):
        want = (GREY,) * 3 if j == 4 else TINY_COLOUR[classes[lab]]
        assert _near(tr.x[j], want, 6), j
    # val: labels from the annotations, grouped by class, file order inside
    assert te.y.tolist() == [0, 0, 1, 1, 2, 2]
    for img, lab in zip(te.x, te.y.tolist()):
        assert _near(img, TINY_COLOUR[classes[lab]], 6)
    # the parent folder of tiny-imagenet-200/ works too
    assert torch.equal(load_tiny_imagenet(tiny.parent)["test"].x, te.x)


@pytest.mark.parametrize("prefix", ["tiny-imagenet-200/", ""])
def test_tiny_imagenet_zip_matches_folder(tiny, tmp_path, prefix):
    z = _zip_tree(tiny, tmp_path / "tiny-imagenet-200.zip", prefix)
    a, b = load_tiny_imagenet(tiny, 2, 1), load_tiny_imagenet(z, 2, 1)
    for s in ("train", "test"):
        assert torch.equal(a[s].x, b[s].x) and torch.equal(a[s].y, b[s].y) and a[s].classes == b[s].classes
    assert a["train"].y.tolist() == [0, 0, 1, 1, 2, 2] and a["test"].y.tolist() == [0, 1, 2]


def test_tiny_imagenet_load_source(tiny, tmp_path):
    z = _zip_tree(tiny, tmp_path / "tiny-imagenet-200.zip", "tiny-imagenet-200/")
    d = load_source({"dataset": "tiny_imagenet", "source": "path", "path": str(z), "root": None,
                     "train_per_class": 1, "test_per_class": 2})
    assert d["train"].y.tolist() == [0, 1, 2] and d["test"].y.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DataError, match="data.source: path"):
        load_source({"dataset": "tiny_imagenet", "source": "torchvision", "path": None, "root": None,
                     "train_per_class": None, "test_per_class": None})


def test_tiny_imagenet_errors(tiny, tmp_path):
    (tiny / "wnids.txt").unlink()
    with pytest.raises(DataError, match="wnids.txt") as e:
        load_tiny_imagenet(tiny)
    assert str(tiny) in str(e.value)
    (tiny / "wnids.txt").write_text("\n".join(WNIDS[:2]) + "\n")  # n02123045 now unknown
    with pytest.raises(DataError, match="n02123045"):
        load_tiny_imagenet(tiny)
    (tiny / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (tiny / "val" / "images" / "val_3.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="val_3.JPEG"):
        load_tiny_imagenet(tiny)
    with pytest.raises(DataError, match="missing.zip"):
        load_tiny_imagenet(tmp_path / "missing.zip")
