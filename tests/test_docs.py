"""README.md and docs/: every relative link names a file of the repository, and every #anchor a heading of its page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[(?:[^\[\]]|`[^`]*`)*\]\(([^()\s]+)\)")  # [text](target), the text may hold `code`
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def links(markdown: str) -> list[str]:
    """The targets of the Markdown links in `markdown`, outside fenced code blocks (a link's own text may be code)."""
    text = FENCE.sub("", markdown)
    return LINK.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, code and punctuation marks dropped (letters, digits, `-` and `_`
    kept), spaces as hyphens."""
    text = CODE.sub(lambda m: m.group(0)[1:-1], heading).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of `page`; repeated headings get -1, -2 … as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken(page: Path) -> list[str]:
    """The relative links of `page` that name no file or directory inside the repository, or no heading there."""
    bad = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(REPO) or not dest.exists():
            bad.append(f"{target}: no such file in the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: {dest.relative_to(REPO)} has no heading #{anchor}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    assert not broken(page), f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(broken(page))


def test_the_checker_finds_broken_links_and_anchors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "a.md").write_text("# Top\n\n## The check's limits, `measured`\n")
    page = tmp_path / "docs" / "p.md"
    page.write_text("[ok](../a.md) [ok](../a.md#the-checks-limits-measured) [`code` ok](../a.md#top) [web](https://x.y)\n"
                    "[gone](../b.md) [bad anchor](../a.md#nope) [outside](../../etc) [self](#nowhere)\n"
                    "```\n[in a fence](missing.md)\n```\n")
    assert broken(page) == ["../b.md: no such file in the repository", "../a.md#nope: a.md has no heading #nope",
                            "../../etc: no such file in the repository", "#nowhere: docs/p.md has no heading #nowhere"]


def test_docs_exist_and_are_linked_from_readme() -> None:
    """Every docs page is reachable: README links to docs/README.md, which links to every other page."""
    assert "docs/README.md" in links((REPO / "README.md").read_text())
    index = {Path(t.partition("#")[0]).name for t in links((REPO / "docs" / "README.md").read_text())}
    pages = {p.name for p in PAGES[1:]} - {"README.md"}
    assert pages and pages <= index, f"docs/README.md does not link to {sorted(pages - index)}"
