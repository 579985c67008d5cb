"""The live dashboard: a page that shows a running system at a glance.

``create_app(DashboardSources(...))`` is a Starlette app; ``interlink dashboard`` serves it (the
command is ``interlink.dashboard.command``). See ``docs/observability.md``.

The app is loaded when one of its names is first asked for, not with the package: the CLI
registers the dashboard's command without loading Starlette and httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interlink.dashboard.app import DashboardSources, create_app

__all__ = ["DashboardSources", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("interlink.dashboard.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
