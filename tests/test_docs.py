"""The README and docs/ say things that are true: their Python snippets run and their links resolve.

Snippets. Every fenced block whose info string is ``python`` in README.md and docs/*.md runs here: the blocks of
one page in order, in one namespace (so a page may build on its earlier blocks), with a fresh temporary folder as
the working directory (``runs/...`` lands there) and ``PYRO_VAE_DATA`` pointing at real MNIST. Keep them small
enough to run in seconds (a few hundred images, a small network, K of a few hundred); the text around a block
says what a real run uses. A traceback names the Markdown file and its line.

Skipping. A block that cannot run (a sketch of a class, code that would register a name already taken) is fenced
````` ```python no-run ````` instead, and the paragraph just before it says "not run" and why. Any other info
string that starts with ``py`` (``py``, ``python3``, ``python norun``, ...) fails the test, so a typo cannot skip a
block silently.

Links. Every relative link ``[text](path)`` or ``[text](path#anchor)`` in README.md, BENCHMARKS.md and docs/*.md
must name a file in the repository, and an anchor a heading of that file (GitHub's heading ids). Links inside code
are not links.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO
from models import registry

RUNNABLE = "python"
NO_RUN = "no-run"
SNIPPET_PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
LINKED_PAGES = sorted([*SNIPPET_PAGES, REPO / "BENCHMARKS.md"])

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*(.*)$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    info: str  # the fence's info string, e.g. "python" or "python no-run"
    code: str
    before: str  # the paragraph just before the fence

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def split_fences(text: str, path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """Fenced blocks of ``text``, and its other lines (number, text), which is where prose and headings are."""
    lines = text.splitlines()
    blocks, prose, since_fence, i = [], [], [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m.group(1)[0] == "`" and "`" in m.group(2)):
            prose.append((i + 1, lines[i]))
            since_fence.append(lines[i])
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i + 1
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = start
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        before = []
        for line in reversed(since_fence):
            if not line.strip():
                if before:
                    break
                continue
            before.insert(0, line)
        blocks.append(Block(path, start + 1, info, "\n".join(lines[start:j]), " ".join(before)))
        since_fence, i = [], j + 1
    return blocks, prose


def python_blocks(path: Path) -> list[Block]:
    """The blocks of ``path`` whose info string starts with "py"."""
    return [b for b in split_fences(path.read_text(), path)[0] if b.info.lower().startswith("py")]


def runnable(path: Path) -> list[Block]:
    return [b for b in python_blocks(path) if b.info == RUNNABLE]


def run_blocks(blocks: list[Block], namespace: dict) -> None:
    """Run ``blocks`` in order in ``namespace``; a failure is an AssertionError naming the file and line."""
    for block in blocks:
        # pad with blank lines so the traceback's line numbers are the Markdown file's
        code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
        try:
            exec(code, namespace)
        except Exception as e:
            raise AssertionError(f"the snippet at {block.where} failed: {type(e).__name__}: {e}\n"
                                 + "".join(traceback.format_exception(e)[-6:])) from e


def slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's id of a heading: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    base = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    _, prose = split_fences(path.read_text(), path)
    return {slug(m.group(2), seen) for _, line in prose if (m := _HEADING.match(line))}


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link in ``path``'s prose (code spans and fenced blocks left out)."""
    _, prose = split_fences(path.read_text(), path)
    return [(n, m.group(1)) for n, line in prose for m in _LINK.finditer(_CODE_SPAN.sub("", line))]


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """What is wrong with ``path``'s relative links (none may leave ``root``)."""
    problems = []
    for n, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{_shown(path)}:{n}: ({target})"
        if root.resolve() not in (dest, *dest.parents):
            problems.append(f"{where} points outside the repository")
        elif not dest.exists():
            problems.append(f"{where} names no file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{where} names no heading of {dest.name}")
    return problems


# --- the pages -------------------------------------------------------------------------------------------------

def test_the_pages_are_there_and_each_is_linked_from_the_readme():
    docs = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert {"training.md", "evaluation.md", "own-data.md", "variants.md", "distributed.md", "gpu.md",
            "faults.md"} <= set(docs)
    readme_links = {(REPO / t.partition("#")[0]).resolve() for _, t in links(REPO / "README.md")}
    assert [d for d in docs if (REPO / "docs" / d).resolve() not in readme_links] == []


@pytest.mark.parametrize("page", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_each_page_opens_with_what_it_is_for(page):
    _, prose = split_fences(page.read_text(), page)
    text = [line for _, line in prose if line.strip()]
    assert text[0].startswith("# ") and text[1].startswith("This page is for"), page.name


def test_the_readme_is_short_and_keeps_the_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    ci = (REPO / ".ci" / "run").read_text()
    plain = [b.code.strip() for b in split_fences(readme, REPO / "README.md")[0] if not b.info]
    for command in ('pip install -e ".[test]"', "python -m pytest"):
        assert command in plain and command in ci


# --- snippets --------------------------------------------------------------------------------------------------

def test_every_python_fence_runs_or_is_marked_no_run_with_a_reason():
    blocks = [b for page in SNIPPET_PAGES for b in python_blocks(page)]
    assert len([b for b in blocks if b.info == RUNNABLE]) >= 8
    bad = [f"{b.where}: ```{b.info}" for b in blocks if b.info not in (RUNNABLE, f"{RUNNABLE} {NO_RUN}")]
    assert bad == [], f"a python fence is ```python or ```python {NO_RUN}, nothing else"
    unexplained = [b.where for b in blocks if b.info != RUNNABLE and "not run" not in b.before.lower()]
    assert unexplained == [], "the paragraph before a no-run block says 'not run' and why"


@pytest.mark.parametrize("page", [p for p in SNIPPET_PAGES if runnable(p)], ids=lambda p: p.name)
def test_snippets_run(page, mnist_root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # the snippets import this checkout's code, whatever the cwd
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_VAE_DATA", str(mnist_root))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # a page may register a model class; the registry it changes is this test's copy
    monkeypatch.setattr(registry, "_BY_NAME", dict(registry._BY_NAME))
    monkeypatch.setattr(registry, "_NAME_OF", dict(registry._NAME_OF))
    run_blocks(runnable(page), {"__name__": f"docs_{page.stem.replace('-', '_')}"})


# --- links -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


# --- the checks themselves can fail ----------------------------------------------------------------------------

def test_a_broken_snippet_link_or_fence_is_caught(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with `code`\n\ntext\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nSee [ok](there.md#a-heading-with-code), [gone](missing.md), [no](there.md#nope),\n"
                    "[web](https://example.org) and `[code](not-a-link.md)`.\n\n"
                    "```python\nx = 1\n```\n\nNot run: a sketch.\n\n```python no-run\nundefined_name\n```\n\n"
                    "```py\nskipped by a typo\n```\n\n```python\ny = x + 1\nassert y == 3\n```\n")
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2 and "(missing.md) names no file" in problems[0]
    assert "(there.md#nope) names no heading" in problems[1]
    blocks = python_blocks(page)
    assert [b.info for b in blocks] == ["python", "python no-run", "py", "python"]
    assert blocks[1].before == "Not run: a sketch." and blocks[2].before == blocks[3].before == ""
    with pytest.raises(AssertionError, match=r"page\.md:21 failed: AssertionError") as failure:
        run_blocks(runnable(page), {})
    assert 'page.md", line 22' in str(failure.value)  # the traceback points at the Markdown line
