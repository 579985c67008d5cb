"""``python -m interlink.dashboard``: the same as ``interlink dashboard``."""

import typer

from interlink.cli.dashboard import dashboard

typer.run(dashboard)
