"""``HostHealth``: the data directory takes writes, and the model's files are still there.

A daemon whose disk filled up, whose data directory turned read-only or whose model
directory vanished keeps serving the live version from memory, but it could not record
an edit, and it would not start again. These checks run on a schedule and before every
edit job; a failing check raises an alert and sets a metric, and no job starts while
the data directory cannot take writes, so nothing is half-recorded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from prometheus_client import Gauge

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.metrics import Metrics
from factsync.models.loading import model_dir_problem

PROBE_FILE = ".factsync-write-probe"
PROBE_BYTES = 4096


def data_dir_problem(directory: Path, *, min_free_bytes: int) -> str | None:
    """Why ``directory`` cannot take new state now, or ``None`` when it can.

    Writes, syncs and removes a small probe file (so a full or read-only file system is
    found the way the daemon's own writes would find it), then compares the free space
    with ``min_free_bytes``.
    """
    probe = directory / PROBE_FILE
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return f"cannot write {directory}: {exc.strerror or exc}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    free = shutil.disk_usage(directory).free
    if free < min_free_bytes:
        return (f"less than {min_free_bytes / 2**20:.0f} MiB free under {directory}, the "
                f"room kept for versions and exports")
    return None


class HostHealth:
    """Checks the data and model directories and tells the operator when one fails.

    Args:
        data_dir: where state, versions and exports are written.
        model_dir: the base model's directory (read again at every start); watched once
            ``model_loaded`` is called, since the embedded default only exists after its
            first fetch.
        min_free_bytes: free space below which the data directory counts as full.
        metrics: where ``factsync_data_dir_writable``, ``factsync_data_dir_free_bytes``
            and ``factsync_model_dir_present`` are set.
        alerter: fires ``FactsyncDataDirUnwritable`` and ``FactsyncModelDirMissing``.
    """

    def __init__(self, *, data_dir: Path, model_dir: Path, min_free_bytes: int,
                 metrics: Metrics, alerter: Alerter) -> None:
        self._data_dir = data_dir
        self._model_dir = model_dir
        self._min_free = min_free_bytes
        self._metrics = metrics
        self._alerter = alerter
        self._watch_model = False
        metrics.model_dir_present.set(float("nan"))  # unknown until the model has loaded

    def model_loaded(self) -> None:
        """The model has loaded from ``model_dir``: watch that directory from now on."""
        self._watch_model = True
        self.check()

    def check(self) -> bool:
        """Check the data directory, and the model directory once the model has loaded;
        whether the data directory can take writes."""
        if self._watch_model:
            self._report(
                "FactsyncModelDirMissing", model_dir_problem(self._model_dir),
                self._metrics.model_dir_present,
                "the live version keeps serving from memory, but the daemon cannot start "
                "again until the model directory is back",
            )
        return self.data_dir_writable()

    def data_dir_writable(self) -> bool:
        """Check the data directory only (before a job); whether it can take writes."""
        problem = data_dir_problem(self._data_dir, min_free_bytes=self._min_free)
        try:
            self._metrics.data_dir_free_bytes.set(shutil.disk_usage(self._data_dir).free)
        except OSError:
            self._metrics.data_dir_free_bytes.set(0)
        self._report("FactsyncDataDirUnwritable", problem, self._metrics.data_dir_writable,
                     "no edit job starts until it can be written; the live version is unchanged")
        return problem is None

    def _report(self, name: str, problem: str | None, gauge: Gauge, consequence: str) -> None:
        gauge.set(0 if problem else 1)
        if problem is None:
            self._alerter.resolve(name)
        else:  # the alerter logs it once, and again only if the problem changes
            self._alerter.fire(Alert(name, "critical", f"{problem}; {consequence}"))
