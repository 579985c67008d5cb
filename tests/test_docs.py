"""The code in the README and every page under docs/ runs as written, against real servers.

Each page runs in a fresh interpreter (tests/doc_runner.py: its blocks in order, in one
namespace, the names it leaves to the reader made as real objects), so a page that configures
logging or tracing globally leaves nothing behind. A block that cannot run says why in a
``<!-- not-run: REASON -->`` comment, and is still compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_runner import ROOT, blocks_of, compiled

PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
RUNNER = Path(__file__).resolve().parent / "doc_runner.py"


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page: str, tmp_path: Path) -> None:
    """Every python block of the page runs, in order, without an error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(RUNNER), page],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"{page} failed:\n{done.stdout}\n{done.stderr}"
    assert f"{page}: " in done.stdout


def test_pages_show_code() -> None:
    """The pages are found and most have blocks (a broken regex would pass vacuously)."""
    counts = {page: len(blocks_of(page, (ROOT / page).read_text())) for page in PAGES}
    assert {"README.md", "docs/resilience.md", "docs/sync.md", "docs/messaging.md"} <= set(counts)
    assert sum(counts.values()) >= 30, counts


def test_not_run_blocks_are_rare_and_say_why() -> None:
    """At most a few blocks are exempt, each with a reason."""
    exempt = [
        (block.page, block.line, block.not_run)
        for page in PAGES
        for block in blocks_of(page, (ROOT / page).read_text())
        if block.not_run is not None
    ]
    assert len(exempt) <= 3, exempt
    assert all(reason and len(reason) > 10 for _, _, reason in exempt), exempt


def test_markers_and_indented_blocks_are_read() -> None:
    """The runner sees indented blocks (inside list items) and the marker on the line before."""
    text = (
        "Intro.\n\n"
        "```python\nx = 1\n```\n\n"
        "<!-- not-run: needs a payment provider's sandbox -->\n"
        "```python\npay()\n```\n\n"
        "- item:\n\n"
        "  <!-- run-until-stopped -->\n"
        "  ```python\n  await serve()\n  ```\n"
    )
    plain, skipped, served = blocks_of("page.md", text)
    assert (plain.code, plain.line, plain.not_run, plain.until_stopped) == (
        "x = 1\n",
        4,
        None,
        False,
    )
    assert (skipped.code, skipped.not_run) == ("pay()\n", "needs a payment provider's sandbox")
    assert (served.code, served.until_stopped, served.not_run) == ("await serve()\n", True, None)


def test_tracebacks_point_at_the_page_line() -> None:
    """A failing block names the page and the line of the page, after hosts are rewritten."""
    [block] = blocks_of(
        "docs/x.md", "# T\n\n```python\na = 1\nurl = 'http://menu.internal'\n1 / 0\n```\n"
    )
    code = compiled(block, {"http://menu.internal": "http://127.0.0.1:1"})
    namespace: dict[str, object] = {}
    with pytest.raises(ZeroDivisionError) as caught:
        eval(code, namespace)
    assert namespace["url"] == "http://127.0.0.1:1"
    frame = caught.traceback[-1]
    assert (str(frame.path), frame.lineno + 1) == ("docs/x.md", 6)
