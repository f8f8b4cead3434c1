"""Every relative link and image in the user documentation resolves, and the README stays short.

The README is what a newcomer reads first; a dead link or image there (or in docs/ and the recipe
READMEs it points to) sends them nowhere. Links inside code spans and fenced blocks are not links,
and web, mail and in-page (#anchor) links are not checked here.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 300

#: [text](target "title") and ![alt](target); the target may be wrapped in <...>
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
#: [id]: target  (reference-style definitions)
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def documentation_files() -> list[Path]:
    """README.md, every Markdown file under docs/, and every README.md under surgery/recipes/."""
    files = [ROOT / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted((ROOT / "surgery" / "recipes").rglob("README.md"))
    return [f for f in files if f.is_file()]


def prose(text: str) -> str:
    """The Markdown text without fenced code blocks and inline code spans (links there are examples)."""
    kept: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            kept.append(INLINE_CODE.sub("", line))
    return "\n".join(kept)


def link_targets(text: str) -> list[str]:
    """Every link and image target in the prose of a Markdown text, in order."""
    body = prose(text)
    targets = [m.group(1) for m in INLINE_LINK.finditer(body)]
    targets += [m.group(1) for m in REFERENCE_DEF.finditer(body)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]


def broken_links(md: Path) -> list[str]:
    """The relative targets in ``md`` that do not name an existing file or folder (anchors stripped)."""
    broken = []
    for target in link_targets(md.read_text(encoding="utf-8")):
        if target.lower().startswith(EXTERNAL) or target.startswith("#"):
            continue
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not path:
            continue
        resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else (md.parent / path)
        if not resolved.exists():
            broken.append(target)
    return broken


def test_the_documentation_set_is_found() -> None:
    names = {f.relative_to(ROOT).as_posix() for f in documentation_files()}
    assert "README.md" in names
    assert "surgery/recipes/smollm2/README.md" in names


@pytest.mark.parametrize("md", documentation_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(md: Path) -> None:
    broken = broken_links(md)
    assert not broken, f"{md.relative_to(ROOT)} links to missing files: {broken}"


@pytest.mark.parametrize("md", documentation_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_stays_inside_the_repository(md: Path) -> None:
    outside = []
    for target in link_targets(md.read_text(encoding="utf-8")):
        if target.lower().startswith(EXTERNAL) or target.startswith("#"):
            continue
        resolved = (md.parent / unquote(target.split("#", 1)[0])).resolve()
        if ROOT not in resolved.parents and resolved != ROOT:
            outside.append(target)
    assert not outside, f"{md.relative_to(ROOT)} links outside the repository: {outside}"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it to {README_MAX_LINES} (details go in docs/)"
    )


def test_the_checker_sees_links_images_and_skips_code(tmp_path: Path) -> None:
    (tmp_path / "there.png").write_bytes(b"")
    md = tmp_path / "page.md"
    md.write_text(
        "![ok](there.png) [ok](there.png#part) [web](https://example.org) [anchor](#x)\n"
        '![gone](../missing.png) [gone](nowhere.md "title")\n'
        "`[not a link](in-code.md)`\n```\n[not a link](in-fence.md)\n```\n[ref]: missing-ref.md\n",
        encoding="utf-8",
    )
    assert broken_links(md) == ["../missing.png", "nowhere.md", "missing-ref.md"]
