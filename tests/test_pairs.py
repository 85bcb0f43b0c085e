"""The CLIP track's data layer: image-caption pairs (CSV/TSV, WebDataset shards), captions in the dataset
artifact, label -1 for pairs of unknown class, the ImageNet zero-shot test set and the user-path check before
the first job. Every file is fabricated in tmp_path (a few tiny PIL images)."""

import io
import tarfile

import pytest
import torch
import yaml
from dormant.data.imagefiles import short_side_crop_box
from dormant.data.imageset import ImageSet, check_sets, clean_caption, load_dataset, save_dataset
from dormant.data.pairs import read_pairs
from dormant.data.subsets import stratified_subset
from dormant.errors import CheckpointError, DataError
from dormant.io import save_tensors
from dormant.userpaths import check_user_paths, missing_paths_message
from PIL import Image

from .workflow_helpers import copy_workflow, snakemake

COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10), (10, 250, 250)]


def _img(path, colour, size=(20, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _mean_rgb(img: torch.Tensor) -> list[int]:
    return img.float().mean(dim=(1, 2)).round().int().tolist()


def _close(img: torch.Tensor, colour, tol=12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(_mean_rgb(img), colour))


# --------------------------------------------------------------------------- resize + centre crop


def test_crop_box_hand_cases():
    # landscape 40x30 -> shorter side 20: 26x20 (int(20 * 40 / 30) = 26), left = round(6 / 2) = 3
    assert short_side_crop_box(40, 30, 20) == ((26, 20), (3, 0, 23, 20))
    # portrait 30x45 -> 16x24, top = round(8 / 2) = 4
    assert short_side_crop_box(30, 45, 16) == ((16, 24), (0, 4, 16, 20))
    # square: no crop
    assert short_side_crop_box(50, 50, 10) == ((10, 10), (0, 0, 10, 10))


def test_pairs_are_centre_cropped_not_squashed(tmp_path):
    """A 64x32 image, left quarter red, middle half green, right quarter blue: resized to 32x16, the centre
    16x16 crop keeps only the green middle (a squash to 16x16 would keep all three colours)."""
    im = Image.new("RGB", (64, 32), (0, 200, 0))
    im.paste((200, 0, 0), (0, 0, 16, 32))
    im.paste((0, 0, 200), (48, 0, 64, 32))
    im.save(tmp_path / "a.png")
    (tmp_path / "p.csv").write_text("image,caption\na.png,green middle\n")
    x, text = read_pairs(tmp_path / "p.csv", 16)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.uint8 and text == ["green middle"]
    assert _close(x[0, :, :, 1:-1], (0, 200, 0), tol=3)


# --------------------------------------------------------------------------- CSV / TSV pairs


def test_open_clip_csv_header_relative_and_absolute_paths(tmp_path):
    _img(tmp_path / "imgs" / "a.jpg", COLOURS[0])
    _img(tmp_path / "imgs" / "b.png", COLOURS[1], (9, 30))
    absolute = _img(tmp_path / "elsewhere" / "c.png", COLOURS[2])
    (tmp_path / "pairs.csv").write_text(
        "id,filepath,title\n"
        '1,imgs/a.jpg,"a red square, seen from above"\n'
        "\n"
        f"2,imgs/b.png,a green bar\n3,{absolute},blue\n")
    x, text = read_pairs(tmp_path / "pairs.csv", 8)
    assert x.shape == (3, 3, 8, 8)
    assert text == ["a red square, seen from above", "a green bar", "blue"]
    for img, c in zip(x, COLOURS[:3]):
        assert _close(img, c)


def test_tsv_with_image_caption_header_and_limit(tmp_path):
    for i in range(4):
        _img(tmp_path / f"{i}.png", COLOURS[i])
    (tmp_path / "pairs.tsv").write_text("caption\timage\n" + "".join(f"photo {i}\t{i}.png\n" for i in range(4)))
    x, text = read_pairs(tmp_path / "pairs.tsv", 6, limit=3)
    assert text == ["photo 0", "photo 1", "photo 2"] and x.shape == (3, 3, 6, 6)
    assert [_close(img, c) for img, c in zip(x, COLOURS)] == [True] * 3


def test_open_clip_tab_separated_csv(tmp_path):
    """open_clip's CSV loader defaults to tab-separated files named .csv: the header's tab decides."""
    _img(tmp_path / "a.png", COLOURS[0])
    (tmp_path / "cc3m.csv").write_text("filepath\ttitle\na.png\ta caption, with a comma\n")
    assert read_pairs(tmp_path / "cc3m.csv", 4)[1] == ["a caption, with a comma"]


def test_captions_with_line_breaks_and_tabs_become_one_line(tmp_path):
    _img(tmp_path / "a.png", COLOURS[0])
    _img(tmp_path / "b.png", COLOURS[1])
    (tmp_path / "p.csv").write_text('image,caption\na.png,"two\nlines\r\nand\ta tab"\nb.png,  padded   words \n')
    _, text = read_pairs(tmp_path / "p.csv", 4)
    assert text == ["two lines and a tab", "padded words"]
    assert clean_caption("a\u2028b\x0bc") == "a b c"


def test_missing_images_are_named_with_their_lines(tmp_path):
    _img(tmp_path / "a.png", COLOURS[0])
    (tmp_path / "p.csv").write_text('image,caption\na.png,ok\ngone.png,"quoted\ncaption"\nalso_gone.jpg,x\n')
    with pytest.raises(DataError, match=r"2 image file\(s\) not found .*line 3: gone\.png; line 5: also_gone\.jpg"):
        read_pairs(tmp_path / "p.csv", 4)


def test_undecodable_image_and_bad_rows_are_refused_with_their_line(tmp_path):
    _img(tmp_path / "a.png", COLOURS[0])
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "p.csv").write_text("image,caption\na.png,ok\nbad.jpg,broken\n")
    with pytest.raises(DataError, match=r"p\.csv line 3 .*bad\.jpg"):
        read_pairs(tmp_path / "p.csv", 4)
    (tmp_path / "q.csv").write_text("image,caption\na.png,  \n")
    with pytest.raises(DataError, match=r"q\.csv line 2: empty caption"):
        read_pairs(tmp_path / "q.csv", 4)
    (tmp_path / "r.csv").write_text("url,text\na.png,x\n")
    with pytest.raises(DataError, match=r"r\.csv: header \['url', 'text'\] has no columns filepath and title"):
        read_pairs(tmp_path / "r.csv", 4)
    with pytest.raises(DataError, match="not found"):
        read_pairs(tmp_path / "nope.csv", 4)


# --------------------------------------------------------------------------- WebDataset shards


def _shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, blob in samples:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_webdataset_shards_in_order_with_limit(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    _shard(d / "00001.tar", [("s/000002.png", _png(COLOURS[2])), ("s/000002.txt", b"third\n"),
                             ("s/000002.json", b"{}")])
    _shard(d / "00000.tar", [("000000.txt", b"first"), ("000000.jpg", _png(COLOURS[0])),
                             ("000001.png", _png(COLOURS[1])), ("000001.txt", "caf\u00e9\tsecond".encode())])
    x, text = read_pairs(d, 5)
    assert text == ["first", "caf\u00e9 second", "third"] and x.shape == (3, 3, 5, 5)
    assert [_close(img, c) for img, c in zip(x, COLOURS)] == [True] * 3
    assert read_pairs(d / "00000.tar", 5, limit=1)[1] == ["first"]
    with tarfile.open(d / "00002.tgz", "w:gz") as tar:
        tar.add(d / "00001.tar", arcname="ignored.bin")  # a member that is neither image nor caption
    assert read_pairs(d, 5)[1] == ["first", "caf\u00e9 second", "third"]
    _shard(d / "00003.tar", [("000003.png", _png(COLOURS[3]))])
    with pytest.raises(DataError, match=r"00003\.tar: sample '000003' has no 000003\.txt caption"):
        read_pairs(d, 5)


# --------------------------------------------------------------------------- captions in the dataset artifact


def _pair_sets(n=6, labels=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.full((n,), -1) if labels is None else torch.tensor(labels)
    text = [f"caption {i} \u00e9t\u00e9 \u65e5\u672c" for i in range(n)]
    test = ImageSet(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2, 0]), ["a", "b", "c"])
    return {"train": ImageSet(x, y, ["a", "b", "c"], text), "test": test}


def test_dataset_round_trip_keeps_captions_and_unknown_labels(tmp_path):
    sets = _pair_sets()
    save_dataset(sets, tmp_path / "d.safetensors", {"source": "pairs"})
    back = load_dataset(tmp_path / "d.safetensors")
    assert back["train"].text == sets["train"].text and back["test"].text is None
    assert torch.equal(back["train"].x, sets["train"].x) and back["train"].y.tolist() == [-1] * 6
    sub = back["train"].subset(torch.tensor([4, 1]))
    assert sub.text == [sets["train"].text[4], sets["train"].text[1]] and torch.equal(sub.x, sets["train"].x[[4, 1]])
    masked = back["train"].subset(torch.tensor([True, False, False, True, False, False]))
    assert masked.text == [sets["train"].text[0], sets["train"].text[3]]
    assert back["train"].to("cpu").text == sets["train"].text
    # a dataset without captions is stored as before: no train_text, no metadata flag
    plain = {"train": ImageSet(sets["test"].x.clone(), sets["test"].y.clone(), ["a", "b", "c"]), "test": sets["test"]}
    save_dataset(plain, tmp_path / "p.safetensors", {"captions": True})
    assert load_dataset(tmp_path / "p.safetensors")["train"].text is None


def test_generated_captions_keep_real_labels(tmp_path):
    sets = _pair_sets(labels=[0, 1, 2, 0, 1, 2])
    save_dataset(sets, tmp_path / "d.safetensors", {})
    assert load_dataset(tmp_path / "d.safetensors")["train"].y.tolist() == [0, 1, 2, 0, 1, 2]


def _raw(tmp_path, sets, text_bytes, meta):
    tensors = {f"{s}_{k}": getattr(sets[s], k) for s in ("train", "test") for k in ("x", "y")}
    if text_bytes is not None:
        tensors["train_text"] = torch.tensor(list(text_bytes), dtype=torch.uint8)
    save_tensors(tensors, tmp_path / "bad.safetensors", {"classes": ["a", "b", "c"], **meta})
    return tmp_path / "bad.safetensors"


@pytest.mark.parametrize("text_bytes, meta, match", [
    (b"one\ntwo", {"captions": True}, "train_text holds 2 captions but train_x 6 images"),
    (None, {"captions": True}, "are not the dataset's"),
    (b"\n".join([b"c"] * 6), {}, "are not the dataset's"),
    (b"\xff\xfe" + b"\n" * 5, {"captions": True}, "not UTF-8"),
    (b"\n" * 5, {"captions": "yes"}, "'captions' must be true or false"),
])
def test_artifact_captions_are_checked(tmp_path, text_bytes, meta, match):
    with pytest.raises(CheckpointError, match=match):
        load_dataset(_raw(tmp_path, _pair_sets(), text_bytes, meta))


def test_unknown_labels_need_captions_and_only_the_train_split_has_captions(tmp_path):
    sets = _pair_sets()
    check_sets(sets, "pairs")  # -1 with captions, classes of the test set only
    no_text = {"train": ImageSet(sets["train"].x, sets["train"].y, ["a", "b", "c"]), "test": sets["test"]}
    with pytest.raises(DataError, match=r"train labels range -1\.\.-1, outside the 3 classes \(label -1"):
        check_sets(no_text, "src")
    with pytest.raises(CheckpointError, match="label -1"):
        load_dataset(_raw(tmp_path, no_text, None, {}))
    bad_test = {"train": sets["train"], "test": ImageSet(sets["test"].x, torch.tensor([0, -1, 2, 1]), ["a", "b", "c"])}
    with pytest.raises(DataError, match="test labels range -1"):
        check_sets(bad_test, "src")
    captioned_test = ImageSet(sets["test"].x, sets["test"].y, ["a", "b", "c"], list("wxyz"))
    with_text = {"train": sets["train"], "test": captioned_test}
    with pytest.raises(DataError, match="the test split has captions"):
        check_sets(with_text, "src")
    with pytest.raises(ValueError, match="only the train split"):
        save_dataset(with_text, tmp_path / "x.safetensors", {})
    # generated captions with real labels still need every class
    partial = {"train": ImageSet(sets["train"].x, torch.zeros(6, dtype=torch.long), ["a", "b", "c"],
                                 sets["train"].text), "test": sets["test"]}
    with pytest.raises(DataError, match="class\\(es\\) b, c have no train images"):
        check_sets(partial, "src")


def test_imageset_refuses_multi_line_or_miscounted_captions():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="caption 1 holds a line break"):
        ImageSet(x, torch.zeros(2), ["a", "b"], ["ok", "two\nlines"])
    with pytest.raises(ValueError, match="one caption per image"):
        ImageSet(x, torch.zeros(2), ["a", "b"], ["only one"])


# --------------------------------------------------------------------------- stratified subset with -1


def _old_stratified(y, num_classes, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[: int(round(ratio * len(idx)))]])
    return torch.cat(picks).sort().values


def test_stratified_subset_treats_unknown_labels_as_one_group():
    y = torch.tensor([0] * 10 + [1] * 6 + [-1] * 20)[torch.randperm(36, generator=torch.Generator().manual_seed(1))]
    idx = stratified_subset(y, 2, 0.5, seed=3)
    assert [(y[idx] == c).sum().item() for c in (0, 1, -1)] == [5, 3, 10]
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 18
    # the classes are drawn first, as before: their picks do not depend on the -1 group
    known = torch.nonzero(y >= 0).flatten()
    assert torch.equal(idx[y[idx] >= 0], _old_stratified(y, 2, 0.5, 3))
    assert torch.equal(stratified_subset(y[known], 2, 0.5, 3), _old_stratified(y[known], 2, 0.5, 3))
    # a file of pairs: all -1, a uniform draw of round(ratio * n), deterministic in the seed
    pairs = torch.full((40,), -1)
    a, b = stratified_subset(pairs, 10, 0.25, 7), stratified_subset(pairs, 10, 0.25, 7)
    assert len(a) == 10 and torch.equal(a, b) and not torch.equal(a, stratified_subset(pairs, 10, 0.25, 8))


# --------------------------------------------------------------------------- ImageNet zero-shot test set

# three real wnids (standard indices 0, 744, 954): tench, projectile (OpenAI's second "missile"), banana
WNIDS = {"n07753592": COLOURS[0], "n01440764": COLOURS[1], "n04008634": COLOURS[2]}
NAMES = ["tench", "projectile", "banana"]  # sorted wnid order


def _class_folders(root, per_class=2):
    for k, (w, c) in enumerate(WNIDS.items()):
        for i in range(per_class):
            _img(root / w / f"ILSVRC2012_val_{10 * k + i:08d}.JPEG", c, (24 + 8 * i, 16))
    return root


def test_imagenet_class_folders_partial_set(tmp_path):
    from dormant.data.sources import load_source

    root = _class_folders(tmp_path / "val")
    sets = load_source({"dataset": "imagenet", "source": "path", "path": str(root), "image_size": 8})
    assert set(sets) == {"test"}
    t = sets["test"]
    assert t.classes == NAMES and t.y.tolist() == [0, 0, 1, 1, 2, 2] and t.x.shape == (6, 3, 8, 8)
    assert _close(t.x[0], COLOURS[1]) and _close(t.x[5], COLOURS[0])
    one = load_source({"dataset": "imagenet", "source": "path", "path": str(root), "test_per_class": 1,
                       "image_size": 8})["test"]
    assert one.y.tolist() == [0, 1, 2]
    _img(root / "n99999999" / "x.JPEG", COLOURS[3])
    with pytest.raises(DataError, match="n99999999 are not ImageNet-1K wnids"):
        load_source({"dataset": "imagenet", "source": "path", "path": str(root)})
    with pytest.raises(DataError, match="source: path"):
        load_source({"dataset": "imagenet", "source": "demo", "path": str(root)})


def test_imagenet_without_timm_names_partial_folders_by_wnid(tmp_path, monkeypatch):
    from dormant.data import imagenet

    monkeypatch.setattr(imagenet, "imagenet_wnids", lambda: None)
    t = imagenet.load_imagenet(_class_folders(tmp_path / "val", 1), image_size=4)
    assert t.classes == sorted(WNIDS)


def test_imagenet_all_1000_class_folders_take_the_full_name_list(tmp_path, monkeypatch):
    from dormant.data import imagenet
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = imagenet.imagenet_wnids()
    for w in wnids:
        _img(tmp_path / "val" / w / "a.png", COLOURS[0], (4, 4))
    t = imagenet.load_imagenet(tmp_path / "val", image_size=4)
    assert len(t.classes) == 1000 == len(set(t.classes)) and t.y.tolist() == list(range(1000))
    assert [i for i, (a, b) in enumerate(zip(t.classes, IMAGENET_CLASSNAMES)) if a != b] == [744, 837]
    assert t.classes[954] == "banana" and t.classes[657] == "missile" and t.classes[836] == "sunglasses"
    monkeypatch.setattr(imagenet, "imagenet_wnids", lambda: None)  # no wnid table: 1000 folders suffice
    assert imagenet.load_imagenet(tmp_path / "val", image_size=4).classes == t.classes


def _flat(root):
    rows = []
    for k, (w, c) in enumerate(WNIDS.items()):
        for i in range(2):
            name = f"ILSVRC2012_val_{10 * k + i:08d}"
            _img(root / f"{name}.JPEG", c)
            rows.append((name, w))
    return rows


def test_imagenet_flat_folder_with_loc_solution_csv(tmp_path):
    from dormant.data.sources import load_source

    rows = _flat(tmp_path / "val")
    loc = tmp_path / "LOC_val_solution.csv"
    loc.write_text("ImageId,PredictionString\n" + "".join(f"{n},{w} 1 2 3 4 {w} 5 6 7 8\n" for n, w in rows[::-1]))
    cfg = {"dataset": "imagenet", "source": "path", "path": str(tmp_path / "val"), "labels": str(loc),
           "image_size": 6}
    t = load_source(cfg)["test"]
    assert t.classes == NAMES and t.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert _close(t.x[0], COLOURS[1]) and _close(t.x[2], COLOURS[2]) and _close(t.x[4], COLOURS[0])
    loc.write_text("ImageId,PredictionString\n" + "".join(f"{n},{w} 1 2 3 4\n" for n, w in rows[1:]))
    with pytest.raises(DataError, match=r"1 image\(s\) not listed in .*first: ILSVRC2012_val_00000000\.JPEG"):
        load_source(cfg)
    loc.write_text("ImageId,PredictionString\n" + "".join(f"{n},{w} 1 2 3 4\n" for n, w in rows)
                   + "ILSVRC2012_val_00000099,n01440764 1 2 3 4\n")
    with pytest.raises(DataError, match=r"1 listed image\(s\) not found .*line 8: ILSVRC2012_val_00000099"):
        load_source(cfg)


def test_imagenet_flat_folder_with_index_lines(tmp_path):
    from dormant.data.imagenet import load_imagenet

    rows = _flat(tmp_path / "val")
    index = {"n01440764": 0, "n04008634": 744, "n07753592": 954}
    (tmp_path / "val.txt").write_text("".join(f"{n}.JPEG {index[w]}\n" for n, w in rows))
    t = load_imagenet(tmp_path / "val", tmp_path / "val.txt", image_size=4, test_per_class=1)
    assert t.classes == NAMES and t.y.tolist() == [0, 1, 2]
    (tmp_path / "val.txt").write_text("x.JPEG 1000\n")
    with pytest.raises(DataError, match=r"val\.txt line 1: expected '<file name> <class index 0\.\.999>'"):
        load_imagenet(tmp_path / "val", tmp_path / "val.txt")


# --------------------------------------------------------------------------- user paths before the first job


def test_check_user_paths_names_every_missing_path_with_its_key(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"")
    cfg = {"data": {"dataset": "imagenet", "source": "path", "path": str(tmp_path / "val"),
                    "labels": str(tmp_path / "LOC.csv")},
           "clip": {"captions": "path", "pairs": str(tmp_path / "cc3m.csv"), "weights": str(tmp_path / "val")}}
    problems = check_user_paths(cfg)
    assert problems == [f"data.labels: {tmp_path / 'LOC.csv'} (not found)",
                        f"clip.pairs: {tmp_path / 'cc3m.csv'} (not found)",
                        f"clip.weights: {tmp_path / 'val'} (not a file)"]
    msg = missing_paths_message(problems, "config/clip-paper.yaml")
    assert "\n" not in msg and msg.startswith("config/clip-paper.yaml: 3 input path(s) missing")
    # keys that are not set, or that the configured sources do not read, are not checked
    cfg["clip"] = {"captions": "generated", "pairs": "/nope.csv", "weights": None}
    cfg["data"] = {"dataset": "cifar10", "source": "demo", "path": "/nope", "labels": "/nope.csv"}
    assert check_user_paths(cfg) == []
    assert check_user_paths({"data": {"source": "path", "path": "/nope.tar"}, "clip": {"captions": "path"}}) == \
        ["data.path: /nope.tar (not found)", "clip.pairs: not set (clip.captions is 'path')"]


def test_imagenet_paths_wait_for_the_run_not_the_dry_run(tiny_params):
    from dormant.config import validate

    tiny_params["data"].update(dataset="imagenet", source="path", path="/nonexistent/val",
                               labels="/nonexistent/LOC_val_solution.csv", image_size=32)
    validate(tiny_params)
    tiny_params["data"]["source"] = "demo"
    with pytest.raises(Exception, match="data.source: ImageNet validation is read from a folder only"):
        validate(tiny_params)
    tiny_params["data"].update(dataset="cifar10", source="path", path="/nonexistent/cifar")
    with pytest.raises(Exception, match="data.labels: only data.dataset imagenet reads a label file"):
        validate(tiny_params)


@pytest.mark.slow
def test_onstart_stops_a_run_before_any_job_but_not_a_dry_run(tmp_path, tiny_params):
    """The real Snakefile: `snakemake -n` expands the grid without the files; a run stops in its onstart
    handler with one line naming both missing paths, exit 2, no job started, no lock left behind."""
    wd = copy_workflow(tmp_path / "wf")
    tiny_params["data"].update(dataset="imagenet", source="path", path="/nonexistent/val",
                               labels="/nonexistent/LOC_val_solution.csv", image_size=32)
    (wd / "inet.yaml").write_text(yaml.safe_dump(tiny_params))
    dry = snakemake(wd, "-n", configfile="inet.yaml")
    assert "prepare_data" in dry.stdout and "input path(s) missing" not in dry.stdout + dry.stderr
    for _ in range(2):  # the second run proves the first left no lock
        r = snakemake(wd, configfile="inet.yaml", check=False, cores=1)
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "input path(s) missing" in ln]
        assert r.returncode == 2 and lines == [
            "error: inet.yaml (--replace-workflow-config): 2 input path(s) missing, no job was started: "
            "data.path: /nonexistent/val (not found); data.labels: /nonexistent/LOC_val_solution.csv (not found)"]
        assert "rule prepare_data" not in r.stdout + r.stderr and not (wd / "results").exists()
