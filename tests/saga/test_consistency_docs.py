"""The Python blocks of docs/consistency.md compile (they name the reader's own objects, so
they are not run; the behaviour each shows is tested in tests/outbox and tests/saga)."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "consistency.md"
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def _blocks() -> list[str]:
    return [textwrap.dedent(m.group(2)) for m in BLOCK.finditer(PAGE.read_text())]


def test_the_page_has_python_blocks() -> None:
    """The regex finds the blocks (an empty list would pass the next test vacuously)."""
    assert len(_blocks()) >= 4


@pytest.mark.parametrize("code", _blocks(), ids=lambda code: code.splitlines()[0][:40])
def test_block_compiles(code: str) -> None:
    """Each block is valid Python (top-level await allowed)."""
    compile(code, str(PAGE), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
