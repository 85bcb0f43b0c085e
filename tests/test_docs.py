"""The documentation stays true: the parameter reference matches the schema and the code, every key has a
meaning, method citations point at sections that exist, and nothing refers to a file outside the repository."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

import params_reference  # noqa: E402


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    files = out.stdout.split() if out.returncode == 0 else []
    files = files or [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".venv" not in p.parts]
    return [REPO / f for f in files if f.endswith((".py", ".md", ".smk", ".yaml", ".yml", ".rst", ".sh", ".toml"))
            or f.endswith(("Makefile", "Snakefile"))]


def test_parameter_reference_is_in_sync_and_complete():
    text = params_reference.render()
    assert (REPO / "docs" / "parameters.md").read_text() == text, \
        "docs/parameters.md is stale: run python workflow/scripts/params_reference.py"
    assert params_reference.missing_meanings(text) == []
    for key in ("`seed`", "`headline_fraction`", "`keep_fractions`", "`patch_size`", "`mask_density`"):
        assert key in text


def test_stale_reference_is_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(params_reference, "OUT", tmp_path / "parameters.md")
    (tmp_path / "parameters.md").write_text("old\n")
    monkeypatch.setattr(sys, "argv", ["params_reference.py", "--check"])
    assert params_reference.main() == 1


def test_method_citations_point_at_existing_sections():
    methods = (REPO / "docs" / "methods.md").read_text()
    sections = set(re.findall(r"^##+ (\d+(?:\.\d+)?)\.? ", methods, re.M))
    cited = set()
    for f in _tracked():
        for m in re.finditer(r"docs/methods\.md,? sections? (\d+(?:\.\d+)?)", f.read_text(errors="replace")):
            cited.add((f.name, m.group(1)))
    assert cited
    assert {(f, s) for f, s in cited if s not in sections} == set()


def test_nothing_refers_to_a_file_outside_the_repository():
    for f in _tracked():
        if f.name == "test_docs.py":  # this file spells out what it looks for
            continue
        text = f.read_text(errors="replace")
        assert "shared/reference" not in text, f
        bare = re.search(r"(?<![\w/.])methods\.md", text)
        assert bare is None or f.parent.name == "docs", f"{f}: cites methods.md without its docs/ path"


def test_readme_is_short_and_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (REPO / target).exists(), target
    for doc in (REPO / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
            assert (doc.parent / target).exists(), (doc.name, target)
