"""The user's input paths, checked before the first job of a run (the Snakefile's ``onstart:`` handler).

Some inputs are only read by a job (models trained elsewhere, ImageNet's validation folder and label file, the
CLIP track's image-caption pairs and pretrained weights): config validation leaves them alone so that a preset
naming them expands with ``snakemake -n`` on a machine without them. A real run checks them all at once before
it starts any job and stops with one line naming each missing path with its config key. Only keys that are set
are checked, and only where the configured source reads them.
"""

from __future__ import annotations

from pathlib import Path

#: what a key must name: "dir" (a folder), "file" or "any" (either)
_KINDS = {"dir": ("folder", Path.is_dir), "file": ("file", Path.is_file), "any": ("file or folder", Path.exists)}


def user_paths(cfg: dict) -> list[tuple[str, str, str]]:
    """(config key, path, kind) of every user path this config's jobs read."""
    out = []
    d = cfg.get("data") or {}
    dataset = d.get("dataset") or "cifar10"
    if d.get("source") == "path" and d.get("path"):
        out.append(("data.path", d["path"], "dir" if dataset in ("imagenet", "gtsrb") else "any"))
    if dataset == "imagenet" and d.get("labels"):
        out.append(("data.labels", d["labels"], "file"))
    if ((cfg.get("model") or {}).get("import") or {}).get("path"):
        out.append(("model.import.path", cfg["model"]["import"]["path"], "file"))
    for name, entry in (cfg.get("attacks") or {}).items():
        if (entry.get("import") or {}).get("path"):
            out.append((f"attacks.{name}.import.path", entry["import"]["path"], "file"))
    for name, entry in (cfg.get("defenses") or {}).items():
        if entry.get("type") == "imported":
            for attack, path in sorted((entry.get("models") or {}).items()):
                out.append((f"defenses.{name}.models.{attack}", path, "file"))
    clip = cfg.get("clip") or {}
    if clip.get("captions") == "path" and clip.get("pairs"):
        out.append(("clip.pairs", clip["pairs"], "any"))  # a CSV/TSV file, a shard or a folder of shards
    if clip.get("weights"):
        out.append(("clip.weights", clip["weights"], "file"))
    return out


def check_user_paths(cfg: dict) -> list[str]:
    """One 'key: path (what is wrong)' entry per missing user path, empty when all are there."""
    problems = []
    for key, path, kind in user_paths(cfg):
        what, ok = _KINDS[kind]
        p = Path(str(path)).expanduser()
        if not ok(p):
            why = f"not a {what}" if p.exists() else "not found"
            problems.append(f"{key}: {path} ({why})")
    if (cfg.get("clip") or {}).get("captions") == "path" and not (cfg.get("clip") or {}).get("pairs"):
        problems.append("clip.pairs: not set (clip.captions is 'path')")
    return problems


def missing_paths_message(problems: list[str], source: str = "config") -> str:
    """The one line a run stops with."""
    return f"{source}: {len(problems)} input path(s) missing, no job was started: {'; '.join(problems)}"
