"""Rebuilds data/cifar10-demo.tar.gz from the full CIFAR-10 JPEG archive.

Usage: python workflow/scripts/make_demo_subset.py SRC.tar.gz [DEST.tar.gz]
Keeps the first 1,000 train and 200 test files of each class, bytes unchanged, sorted names,
fixed mtimes, so the output is reproducible.
"""

import io
import sys
import tarfile

KEEP = {"train": 1000, "test": 200}


def main(src: str, dest: str = "data/cifar10-demo.tar.gz") -> None:
    chosen = []
    with tarfile.open(src, "r:*") as t:
        for m in t.getmembers():
            if not (m.isfile() and m.name.endswith(".jpg")):
                continue
            split, cls, name = m.name.split("/")[-3:]
            if split in KEEP and int(name.split(".")[0]) < KEEP[split]:
                chosen.append((f"{split}/{cls}/{name}", m))
        chosen.sort(key=lambda c: c[0])
        with tarfile.open(dest, "w:gz", compresslevel=9) as out:
            for name, m in chosen:
                blob = t.extractfile(m).read()
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(blob), 0, 0o644
                out.addfile(info, io.BytesIO(blob))
    print(f"{dest}: {len(chosen)} images")


if __name__ == "__main__":
    main(*sys.argv[1:])
