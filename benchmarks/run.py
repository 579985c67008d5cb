"""Run the benchmark claim scripts: every ``benchmarks/*.py`` except this one and helpers
(names starting with ``_``), or only those named on the command line.

    python benchmarks/run.py                      # all of them (what ``make bench`` runs)
    python benchmarks/run.py resilience --quick   # one, as a short smoke run
    python benchmarks/run.py --update-docs        # and rewrite their blocks in docs/performance.md
    python benchmarks/run.py --markdown out.md    # all their tables, in one markdown file

Options other than ``--markdown`` (``--quick``, ``--update-docs``, ``--strict``, ...) are passed
to every script. Each script runs in its own process, so one's imports and garbage cannot skew
the next one's timings. Exits non-zero when a script does (e.g. ``--strict`` and a missed target).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts() -> dict[str, Path]:
    """The claim scripts by name (file stem), in alphabetical order."""
    found = sorted(HERE.glob("*.py"))
    return {p.stem: p for p in found if not p.name.startswith("_") and p.name != "run.py"}


def main(argv: list[str]) -> int:
    available = scripts()
    names: list[str] = []
    options: list[str] = []
    markdown: Path | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--markdown":
            markdown = Path(next(args, ""))
        elif arg.startswith("--markdown="):
            markdown = Path(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            options.append(arg)
        elif arg in available or arg.removesuffix(".py") in available:
            names.append(arg.removesuffix(".py"))
        elif options and not options[-1].startswith("--no-") and "=" not in options[-1]:
            options.append(arg)  # the value of the option before it, e.g. --rounds 3
        else:
            known = ", ".join(available) or "none"
            print(f"run.py: no benchmark named {arg!r} (known: {known})", file=sys.stderr)
            return 2
    chosen = names or list(available)
    command = " ".join([".venv/bin/python", "benchmarks/run.py", *argv])
    env = {**os.environ, "INTERLINK_BENCH_COMMAND": command}
    status = 0
    parts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            print(f"== benchmarks/{name}.py {' '.join(options)}".rstrip(), flush=True)
            extra = ["--markdown", str(Path(tmp) / f"{name}.md")] if markdown else []
            cmd = [sys.executable, str(available[name]), *options, *extra]
            code = subprocess.call(cmd, env=env)
            if code:
                print(f"== benchmarks/{name}.py exited {code}", file=sys.stderr)
                status = status or code
            if markdown and (Path(tmp) / f"{name}.md").exists():
                parts.append(f"## {name}\n\n" + (Path(tmp) / f"{name}.md").read_text("utf-8"))
    if markdown:
        markdown.write_text("\n".join(parts), encoding="utf-8")
        print(f"== tables written to {markdown}")
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
