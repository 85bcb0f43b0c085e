"""Image-caption pairs from a user path (the CLIP track's training data when ``clip.captions: path``).

Two formats:

* a CSV or TSV file with a header row naming the image column and the caption column: ``filepath`` and
  ``title`` (the column names open_clip's CSV loader uses by default) or ``image`` and ``caption``; other
  columns are ignored. The separator is a tab when the header line holds one, else a comma; fields follow
  the CSV quoting rules (a caption with a comma or a line break is quoted). Image paths are relative to the
  file's folder (absolute paths are kept);
* WebDataset shards: a ``.tar`` (or ``.tar.gz``/``.tgz``) file, or a folder of them (read in name order),
  whose members are grouped by key (the member path up to the first dot of its file name) into
  ``<key>.jpg|jpeg|png|webp`` + ``<key>.txt``; other members (``.json``, ``.cls``...) are ignored. Meant for
  small sets: the encoded images of all shards are held in memory until decoded.

Every image is decoded once, its shorter side resized to ``image_size`` and the centre square kept (CLIP's
evaluation preprocessing, as the zero-shot test set), into one preallocated uint8 tensor. Captions are put on
one line (:func:`dormant.data.imageset.clean_caption`); an empty caption, a missing or undecodable image is
refused naming the file and its line (or shard member).
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path

import torch

from dormant.data.imagefiles import _stack
from dormant.data.imageset import clean_caption
from dormant.errors import DataError

#: accepted (image column, caption column) header names, in order of preference
COLUMNS = (("filepath", "title"), ("image", "caption"))
SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_MAX_NAMED = 5


def read_pairs(path: str | os.PathLike, image_size: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """The first ``limit`` pairs (None = all) of a CSV/TSV file or WebDataset shards at ``path``:
    (uint8 [N, 3, image_size, image_size] images, N one-line captions)."""
    p = Path(path).expanduser()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"pairs limit must be a positive integer or null, got {limit!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image size must be a positive integer, got {image_size!r}")
    if not p.exists():
        raise DataError(f"image-caption pairs not found: {p}")
    if p.is_dir() or p.name.lower().endswith(SHARD_SUFFIXES):
        items, captions = _shard_items(p, limit)
    else:
        items, captions = _table_items(p, limit)
    return _stack(items, image_size, crop=True), captions


def _table_items(p: Path, limit: int | None):
    """(name, read) items and captions of a CSV/TSV file; every missing image is named at once."""
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {p}: {e}") from None
    header_line = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in header_line else ","
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(rows)]
    except StopIteration:
        raise DataError(f"{p}: empty file (expected a header with columns filepath,title or image,caption)") from None
    lowered = [h.lower() for h in header]
    cols = next(((lowered.index(a), lowered.index(b)) for a, b in COLUMNS if a in lowered and b in lowered), None)
    if cols is None:
        raise DataError(f"{p}: header {header} has no columns filepath and title (open_clip's names) or "
                        f"image and caption")
    i_img, i_cap = cols
    base = p.parent
    files, captions, lines, missing = [], [], [], []
    start = rows.line_num + 1
    try:
        for row in rows:
            line, start = start, rows.line_num + 1
            if not row or all(not f.strip() for f in row):
                continue
            if len(row) <= max(i_img, i_cap):
                raise DataError(f"{p} line {line}: {len(row)} field(s), the header has {len(header)}")
            rel, cap = row[i_img].strip(), clean_caption(row[i_cap])
            if not rel:
                raise DataError(f"{p} line {line}: empty image path")
            if not cap:
                raise DataError(f"{p} line {line}: empty caption")
            f = Path(rel).expanduser()
            f = f if f.is_absolute() else base / f
            if not f.is_file():
                missing.append(f"line {line}: {rel}")
            files.append(f)
            captions.append(cap)
            lines.append(line)
            if limit is not None and len(files) == limit:
                break
    except csv.Error as e:
        raise DataError(f"{p} line {rows.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {e}") from None
    if missing:
        more = f" and {len(missing) - _MAX_NAMED} more" if len(missing) > _MAX_NAMED else ""
        raise DataError(f"{p}: {len(missing)} image file(s) not found (relative to {base}): "
                        f"{'; '.join(missing[:_MAX_NAMED])}{more}")
    if not files:
        raise DataError(f"{p}: no image-caption pairs after the header")
    items = [(f"{p} line {ln} ({f})", (lambda f=f: f)) for ln, f in zip(lines, files)]
    return items, captions


def _shard_key(name: str) -> tuple[str, str]:
    """WebDataset's grouping: 'a/b/000123.seg.png' -> ('a/b/000123', 'seg.png')."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _shard_items(p: Path, limit: int | None):
    """(name, read) items and captions of WebDataset shards (one .tar or a folder of them), in shard order."""
    shards = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(SHARD_SUFFIXES)) \
        if p.is_dir() else [p]
    if not shards:
        raise DataError(f"{p}: no .tar shards in this folder (expected WebDataset shards of <key>.jpg + <key>.txt)")
    items, captions = [], []
    for shard in shards:
        groups: dict[str, dict[str, bytes]] = {}
        try:
            with tarfile.open(shard, "r:*") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, ext = _shard_key(m.name)
                    if ext in SHARD_IMAGE_EXTS or ext == "txt":
                        groups.setdefault(key, {})[ext] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"WebDataset shard {shard} is unreadable or corrupt: {e}") from e
        for key, g in groups.items():
            images = [e for e in SHARD_IMAGE_EXTS if e in g]
            if "txt" not in g:
                raise DataError(f"{shard}: sample {key!r} has no {key}.txt caption")
            if not images:
                raise DataError(f"{shard}: sample {key!r} has no image ({', '.join(SHARD_IMAGE_EXTS)})")
            try:
                cap = clean_caption(g["txt"].decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{shard}: {key}.txt is not UTF-8 text") from None
            if not cap:
                raise DataError(f"{shard}: {key}.txt is an empty caption")
            blob = g[images[0]]
            items.append((f"{shard} member {key}.{images[0]}", (lambda b=blob: b)))
            captions.append(cap)
            if limit is not None and len(items) == limit:
                return items, captions
    if not items:
        raise DataError(f"{p}: no <key>.jpg + <key>.txt samples in the shard(s)")
    return items, captions
