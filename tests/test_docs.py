"""The README stays a short page for users, its example runs, and no relative link of README.md or docs/ is
broken: each points at a file that exists and, for a Markdown file with an anchor, at one of its headings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
README_LIMIT_BYTES = 15 * 1024

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text a reader follows links in: no code blocks, inline code or HTML comments."""
    return INLINE_CODE.sub("", HTML_COMMENT.sub("", FENCE.sub("", text)))


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation (backticks, colons, dots, ...) dropped, spaces to
    hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 ... for repeated headings."""
    found, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        slug = github_anchor(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: {linked.name} has no heading with the anchor #{anchor}")
    return broken


def test_readme_is_a_short_page_for_users():
    size = len(README.read_bytes())
    assert size <= README_LIMIT_BYTES, (f"README.md is {size} bytes, over {README_LIMIT_BYTES}: move the detail "
                                        "into a guide under docs/ and link it")


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(REPO).as_posix() for d in DOCS])
def test_every_relative_link_points_at_a_file_and_heading_that_exist(doc):
    assert broken_links(doc) == []


def test_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "guide.md").write_text("# Guide\n\n## Your model: `model=custom`\n\ntext\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](guide.md#your-model-modelcustom) [self](#page) `[code](gone.md)`\n\n# Page\n\n"
                    "[gone](gone.md) [bad anchor](guide.md#nowhere) [web](https://example.org/x.md)\n"
                    "```\n[in a code block](gone.md)\n```\n")
    assert broken_links(page) == ["gone.md: no such file",
                                  "guide.md#nowhere: guide.md has no heading with the anchor #nowhere"]


def readme_example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    assert blocks, "README.md has no python example"
    return blocks[0]


def run_readme_example(code: str) -> torch.optim.Optimizer:
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["opt"]


def test_readme_example_trains_without_the_optional_compile():
    code = readme_example()
    assert "@torch.compile" in code
    opt = run_readme_example(code.replace("@torch.compile", "", 1))
    # three steps into a 12,500-step blend: alpha_t = 1 - 3 * 8e-5
    assert float(opt.param_groups[0]["inverse_adam_rate"]) == pytest.approx(1 - 3 * 8e-5)


@pytest.mark.slow
def test_readme_example_runs_as_written_with_the_compiled_step():
    opt = run_readme_example(readme_example())
    assert float(opt.param_groups[0]["inverse_adam_rate"]) == pytest.approx(1 - 3 * 8e-5)
