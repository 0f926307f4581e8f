"""The console's Jinja2 templates: one autoescaping environment, its filters, and pages
rendered from it."""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

SECURITY_HEADERS = {
    # The pages run no script and load only the console's own stylesheet and charts.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class Pages:
    """Renders the package's templates as HTML responses.

    Every value is escaped (autoescape is on for every template) and a name a template
    uses but the view did not give is an error, not an empty string.
    """

    def __init__(self) -> None:
        self._env = Environment(
            loader=PackageLoader("factsync.daemon.console", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters.update(when=when, kpi=kpi, seconds=seconds)

    def render(self, template: str, *, status_code: int = 200, **values: Any) -> HTMLResponse:
        """``template`` filled with ``values``, as a response with ``status_code``."""
        html = self._env.get_template(template).render(**values)
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def when(epoch: float | None) -> str:
    """Epoch seconds as a UTC timestamp; a dash for none."""
    if epoch is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def kpi(value: Any) -> str:
    """A KPI value with three decimals; a dash when it was not measured."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.3f}"
    return str(value)


def seconds(value: float | None) -> str:
    """A duration in seconds, short: ``0.4 s``, ``12 s``, ``3 min 5 s``."""
    if value is None:
        return "—"
    if value < 10:
        return f"{value:.1f} s"
    if value < 60:
        return f"{value:.0f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest} s"
