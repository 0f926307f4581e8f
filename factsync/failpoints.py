"""Named points where the reliability suite kills the daemon on purpose.

``failpoint(name)`` does nothing unless the environment variable ``FACTSYNC_FAILPOINT``
equals ``name``; then the process sends itself SIGKILL at that exact point, as a crash or
an out-of-memory kill would. Tests restart the daemon afterwards and check that nothing
was lost, applied twice or served half-written.
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "FACTSYNC_FAILPOINT"

log = logging.getLogger(__name__)


def failpoint(name: str) -> None:
    """Kill this process now if the failpoint ``name`` is armed."""
    if os.environ.get(ENV) == name:
        log.warning("failpoint %s: killing the process", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
