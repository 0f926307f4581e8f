"""The operator's web console under ``/ui/``: versions and KPI charts, jobs, facts,
quarantine, alerts and connector health, and forms to roll back, revert and retry.

Server-rendered HTML that reads with JavaScript off; ``console_router`` builds its
routes on the JSON API's own ``ApiContext``.
"""

from factsync.daemon.console.router import console_router

__all__ = ["console_router"]
