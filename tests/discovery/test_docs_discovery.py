"""The code blocks of docs/discovery.md are valid Python (top-level await allowed).

They leave servers, apps and stubs to the reader, so they are compiled, not run; the behaviour
each shows has its own test in this directory.
"""

from __future__ import annotations

import ast
import re

import pytest
from _discovery_support import ROOT

PAGE = ROOT / "docs" / "discovery.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_examples() -> None:
    """The page shows code (the parametrized test below would silently pass on none)."""
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS, ids=lambda code: code.split("\n", 1)[0][:30])
def test_example_compiles(code: str) -> None:
    """Each python block compiles."""
    compile(code, str(PAGE), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
