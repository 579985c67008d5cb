"""The code in the README and the feature pages runs as written."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/resilience.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


async def _fetch_menu_async(restaurant_id: str) -> list[str]:
    return [f"dish of {restaurant_id}"]


def _fetch_menu(restaurant_id: str) -> list[str]:
    return [f"dish of {restaurant_id}"]


def _namespace() -> dict[str, Any]:
    """Stand-ins for the names the snippets leave to the reader."""
    from interlink import RetryBudget

    return {
        "fetch_menu": _fetch_menu_async,
        "fetch_menu_async": _fetch_menu_async,
        "restaurant_id": "r1",
        "rid": "r1",
        "shared_budget": RetryBudget(),
        "Menu": list,
    }


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = (ROOT / page).read_text()
        for i, match in enumerate(BLOCK.finditer(text)):
            found.append((page, i, match.group(1)))
    return found


@pytest.mark.parametrize(("page", "index", "code"), _blocks(), ids=lambda x: str(x)[:20])
def test_snippet_runs(page: str, index: int, code: str) -> None:
    """Each python block compiles and runs (top-level await allowed)."""
    if "..." in code:  # a signature sketch, not a program
        compile(code.replace("...", "pass"), page, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    ns = _namespace()
    if "menu.call(fetch_menu" in code:
        ns["fetch_menu"] = _fetch_menu
    compiled = compile(code, f"{page}#{index}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, ns)  # our own documentation, nothing from outside
    if inspect.iscoroutine(result):
        asyncio.run(result)
