"""``python -m interlink.dashboard``: the same as ``interlink dashboard``."""

import typer

from interlink.dashboard.command import dashboard

typer.run(dashboard)
