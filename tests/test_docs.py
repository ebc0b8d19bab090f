"""The documents: README stays an entry point, nothing refers to files a user of the repo does not have (nor do the
configs' comments, train.py, scripts/, the package's code or the tests), and every relative link in README.md and
docs/ resolves to a file of the repo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

# References to material outside the repository (planning notes, tracker numbers): a user cannot follow them.
# `SLURM_LOCAL\.md` and not `slurm_local`: scripts/slurm_local.sh is a file of the repo.
FORBIDDEN = re.compile(
    r"issue ?#?[0-9]|MIMIQ_SPEC|DENSE_AND|ANCHORS\.md|ENVIRONMENT\.md|SLURM_LOCAL\.md|STYLE\.md|shared/"
    r"|\bspec ?§|\(spec [0-9]|\bspec [0-9]+\.[0-9]",
    re.IGNORECASE,
)
# [text](target) and ![alt](target), target up to the first space or ")"; and reference definitions [id]: target
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^[ ]{0,3}\[[^\]]+\]:[ \t]*<?(\S+?)>?(?:[ \t]+.*)?$", re.MULTILINE)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)  # http:, https:, mailto:, //host, #anchor
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def doc_files() -> list[Path]:
    """README.md and docs/**/*.md: the hand-written documents whose links are checked."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def checked_files() -> list[Path]:
    """Every file the forbidden-reference rule covers: the documents and results/**/*.md|csv."""
    results = ROOT / "results"
    return [*doc_files(), *sorted(results.rglob("*.md")), *sorted(results.rglob("*.csv"))]


def commented_files() -> list[Path]:
    """Configs and code whose comments, docstrings, messages and generated text a user reads: conf/**/*.yaml,
    train.py, scripts/*.py, src/**/*.py (with the text of the generated results/<table>.md) and tests/**/*.py, less
    this file, which holds the forbidden patterns and its own known-bad examples."""
    return [
        *sorted((ROOT / "conf").rglob("*.yaml")),
        ROOT / "train.py",
        *sorted((ROOT / "scripts").glob("*.py")),
        *sorted((ROOT / "src").rglob("*.py")),
        *sorted(p for p in (ROOT / "tests").rglob("*.py") if p.resolve() != Path(__file__).resolve()),
    ]


def forbidden_references(text: str) -> list[str]:
    """'line N: <line>' for every line of `text` that names material outside the repository."""
    return [f"line {i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if FORBIDDEN.search(line)]


def relative_links(text: str) -> list[str]:
    """Relative link targets of a markdown text (code blocks and inline code excluded), without #fragments."""
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t.split("#", 1)[0] for t in targets if not EXTERNAL.match(t) and t.split("#", 1)[0]]


def broken_links(doc: Path, text: str) -> list[str]:
    """Relative links of `doc` that do not resolve to a file or folder inside the repository."""
    broken = []
    for target in relative_links(text):
        path = (ROOT / target.lstrip("/")) if target.startswith("/") else (doc.parent / target)
        path = path.resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    return broken


def test_readme_is_an_entry_point():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    assert (ROOT / "docs").is_dir() and len(doc_files()) > 1, "the long-form documents live in docs/"


def test_readme_lists_every_config_group():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    groups = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir())
    missing = [g for g in groups if f"| `{g}` |" not in readme]
    assert not missing, f"config groups missing from README.md's table: {missing}"


@pytest.mark.parametrize("path", [*checked_files(), *commented_files()], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_material_outside_the_repo(path: Path):
    hits = forbidden_references(path.read_text(encoding="utf-8"))
    assert not hits, f"{path.relative_to(ROOT)} refers to files a user of the repo does not have:\n" + "\n".join(hits)


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = broken_links(doc, doc.read_text(encoding="utf-8"))
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


def test_checks_catch_what_they_are_meant_to():
    """The rules above must be able to fail: a known-bad text trips each of them, a known-good one none."""
    bad = "See MIMIQ_SPEC.md §5, issue #9 and ../shared/reference/STYLE.md (spec §7.2); issue 4's cache."
    assert len(forbidden_references(bad)) == 1 and len(forbidden_references(bad + "\nfine\nissue 12")) == 2
    assert len(forbidden_references("# best reading, spec 7.5\n# (spec 4.4)\n# DENSE_AND_PSAQ_V2.md 2.3")) == 3
    good = "scripts/slurm_local.sh up; SLURM_LOCALID; the QuantSpec of a run; a tissue sample; issues are welcome."
    assert not forbidden_references(good)
    doc = ROOT / "docs" / "example.md"
    text = (
        "[ok](../README.md) ![fig](../results/mini/accuracy_vs_bits.png) [web](https://arxiv.org/abs/2407.20021) "
        "[anchor](#tests) [sec](mini.md#budget) [gone](missing.md) [up](../../outside.md)\n"
        "```\n[in code](nowhere.md)\n```\n`[inline](nowhere.md)`\n[ref]: ../Makefile\n[badref]: ../nope.txt\n"
    )
    assert broken_links(doc, text) == ["missing.md", "../../outside.md", "../nope.txt"]
