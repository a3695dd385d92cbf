"""The README stays a page a newcomer reads in minutes, and every relative link in it
and in docs/ leads to a file that exists."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]+\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _pages():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_relative_link_leads_to_a_file():
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if f"docs/{p.name})" not in readme]
    assert not unlinked, unlinked


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("see [there](docs/none.md) and [web](https://example.org/x)")
    found = [t for t in LINK.findall(page.read_text()) if "://" not in t]
    assert found == ["docs/none.md"] and not (tmp_path / found[0]).exists()
