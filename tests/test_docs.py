"""The repository is self-contained in what it cites: every ``*.md`` that a tracked file names exists in
the repository, and every relative link of README.md and docs/*.md leads to a file (and, for a
``#section`` of a Markdown page, to a heading of that page).

Oracles: the file system and GitHub's heading-anchor rule (lower case, punctuation dropped, spaces to
hyphens), not the project's code."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Text that users get and that may cite a document; generated fixtures under tests/data are data.
SCANNED_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".ipynb", ".txt", ".cfg", ".ini", ".sh", ""}
SKIPPED_DIRS = ("tests/data/",)
# A Markdown name as a citation: optional path parts, then NAME.md (not part of a URL or a longer word).
MD_NAME = re.compile(r"(?<![\w./:-])((?:\.{1,2}/|[\w.-]+/)*[\w.-]+\.md)(?![\w-])")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Names a program writes (a file name in code, not a citation), accepted where the repository holds one.
WRITTEN = {"summary.md": "benchmarks/results/summary.md"}


def tracked_files() -> list[pathlib.Path]:
    """The files git tracks (or, outside a git checkout, every file but virtual environments and
    outputs), limited to the text kinds in SCANNED_SUFFIXES."""
    try:
        names = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
        names = [n for n in names if not n.startswith((".git/", ".venv", "outputs/")) and "__pycache__" not in n]
    files = []
    for name in filter(None, names):
        path = ROOT / name
        # this file names absent documents on purpose, as examples for the scanner
        if (
            name.startswith(SKIPPED_DIRS)
            or path.suffix not in SCANNED_SUFFIXES
            or not path.is_file()
            or path == pathlib.Path(__file__).resolve()
        ):
            continue
        files.append(path)
    return files


def resolves(cited: str, citing: pathlib.Path) -> bool:
    """Whether ``cited`` names a file inside the repository: relative to the citing file's folder (a
    Markdown link) or to the repository root (a "docs/x.md" citation in a docstring)."""
    if cited in WRITTEN and (ROOT / WRITTEN[cited]).is_file():
        return True
    for base in (citing.parent, ROOT):
        target = (base / cited).resolve()
        if target.is_relative_to(ROOT) and target.is_file():
            return True
    return False


def test_every_cited_markdown_file_exists():
    files = tracked_files()
    assert any(f.name == "README.md" for f in files) and len(files) > 50  # the scan sees the tree
    missing = []
    for path in files:
        text = URL.sub(" ", path.read_text(encoding="utf-8", errors="replace"))
        for lineno, line in enumerate(text.splitlines(), 1):
            missing += [
                f"{path.relative_to(ROOT)}:{lineno}: {name}"
                for name in MD_NAME.findall(line)
                if not resolves(name, path)
            ]
    assert not missing, "documents cited but not in the repository:\n" + "\n".join(missing)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, characters other than letters, digits,
    spaces, hyphens and underscores dropped, spaces replaced by hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))  # no headings in code blocks
    return {slug(m) for m in re.findall(r"(?m)^#{1,6} +(.+?) *#*$", text)}


def doc_pages() -> list[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not (dest.is_relative_to(ROOT) and dest.exists()):
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_slug_follows_githubs_rule():
    # Known anchors GitHub produces for such headings.
    assert slug("2. Diffusion (EDM, EDM2)") == "2-diffusion-edm-edm2"
    assert slug("The digits demo (`make demo-digits`)") == "the-digits-demo-make-demo-digits"
    assert slug("Run directories") == "run-directories"


def test_scanner_catches_a_missing_citation(tmp_path):
    """The citation pattern sees the forms the sources use (bare, with a folder, as a link), and
    resolution refuses a name that exists only outside the repository."""
    line = "see notes.md §2, docs/absent.md and [x](../elsewhere/other.md); https://h.org/a.md is a URL"
    names = MD_NAME.findall(URL.sub(" ", line))
    assert names == ["notes.md", "docs/absent.md", "../elsewhere/other.md"]
    assert not any(resolves(n, ROOT / "README.md") for n in names)
    assert resolves("docs/method.md", ROOT / "src" / "ddo_lightning" / "losses.py")
    assert resolves("method.md", ROOT / "docs" / "fid.md")
    outside = tmp_path / "outside.md"
    outside.write_text("x")
    assert not resolves(str(outside), ROOT / "README.md")
