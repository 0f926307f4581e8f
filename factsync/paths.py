"""Where factsync keeps its data: models, covariance statistics, state."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "FACTSYNC_HOME"


def data_home() -> Path:
    """The data directory: ``$FACTSYNC_HOME``, or ``~/.cache/factsync`` when unset."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "factsync"
