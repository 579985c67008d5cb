"""The live dashboard: a page that shows a running system at a glance.

``create_app(DashboardSources(...))`` is a Starlette app; ``interlink dashboard`` serves it.
See ``docs/observability.md``.
"""

from interlink.dashboard.app import DashboardSources, create_app

__all__ = ["DashboardSources", "create_app"]
