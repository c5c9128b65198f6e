"""Every ```python block of every docs page runs (blocks of one page share a namespace)."""

import pathlib
import re

import matplotlib
import pytest

matplotlib.use("Agg")

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_docs_exist():
    assert PAGES, "no docs pages found"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_code_runs(page):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(BLOCK.findall(page.read_text())):
        try:
            exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"{page.name} block {i} failed: {exc!r}\n{block}") from exc
