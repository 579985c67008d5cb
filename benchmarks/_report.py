"""What every claim script does with its results: the options ``--markdown PATH``,
``--update-docs`` and ``--strict``; the results as one block of text, written where those
options say; the exit status."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import _harness as h


def add_output_options(
    parser: argparse.ArgumentParser,
    *,
    markdown: str = "also write the table as markdown here",
    docs: str = "rewrite the docs block",
) -> None:
    """``--markdown PATH``, ``--update-docs`` and ``--strict``, with the script's help texts."""
    parser.add_argument("--markdown", type=Path, help=markdown)
    parser.add_argument("--update-docs", action="store_true", help=docs)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def results_text(run: str, *blocks: str) -> str:
    """The command, ``Run: <environment>; <run>``, then each block, each followed by a blank
    line: what a script prints and writes, and the body of its block in docs/performance.md."""
    lines = [f"Command: `{h.command_line()}`  ", f"Run: {h.environment()}; {run}", ""]
    for block in blocks:
        lines += [block, ""]
    return "\n".join(lines)


def publish(key: str, text: str, args: argparse.Namespace, missed: int) -> int:
    """Write ``text`` to ``--markdown`` and (``--update-docs``) into the ``bench:KEY`` block of
    docs/performance.md; the exit status: 1 when a target was missed under ``--strict``."""
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.update_docs:
        h.replace_block(key, text)
    return 1 if missed and args.strict else 0


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows of ready-made cells as GitHub markdown; columns 2 to 5 (the figures) right-aligned."""
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append(
        "|" + "|".join("---:" if 2 <= i <= 5 else "---" for i in range(len(headers))) + "|"
    )
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
