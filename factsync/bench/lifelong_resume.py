"""A ``bench lifelong`` run that survives being stopped: its state after each job.

A stream of a thousand facts runs for hours. After every job the run directory gets
what continuing needs: every checkpoint measured so far, and per method the composed
delta of its applied jobs with the keys they wrote (the engine's per-version state). A
later run with the same arguments starts from there: finished methods are not run
again, and an unfinished one applies its saved delta, restores its engine state and goes
on with the next job. The unedited model is not measured again either.

Files are written before the index that names them, and the index is replaced
atomically, so a run stopped at any moment loses at most the job it was running.
Asked to, the directory also keeps each method's composed delta every so many facts in
``kept/``, so that how the stream's harm grew can be measured afterwards
(``bench damage --since``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from factsync.bench.lifelong import LifelongRun, MethodProgress, MethodRun
from factsync.bench.lifelong_scoring import Checkpoint
from factsync.durable import write_json
from factsync.editing.delta import ModelDelta
from factsync.editing.engine_state import EngineState

INDEX = "run.json"
KEPT = "kept"
_RUN_KEYS = ("dataset", "n", "batch", "unedited", "methods")
_DELTA_NAME = re.compile(r"method(?P<position>\d+)-facts(?P<facts>\d+)\.delta\.safetensors")
"""The name ``RunDirectory.save`` gives a method's composed delta."""


class RunDirectory:
    """The saved state of one ``bench lifelong`` run (a ``lifelong.RunStore``).

    ``arguments`` are what makes two runs the same run (records, methods, sizes, model,
    engine settings); a directory saved with other arguments is refused rather than
    continued with the wrong ones. With ``keep_every``, a method's composed delta after
    every multiple of that many facts stays in ``kept/`` under the same name.
    """

    def __init__(self, path: Path, arguments: dict[str, object], *,
                 keep_every: int | None = None) -> None:
        self.path = Path(path)
        self.arguments = arguments
        self.keep_every = keep_every

    def load(self) -> LifelongRun | None:
        """The run as its last saved job left it, or ``None`` for an empty directory.

        Raises ``ValueError`` when the directory holds a run with other arguments or an
        index that cannot be read.
        """
        if not (self.path / INDEX).exists():
            return None
        saved = _read_index(self.path)
        arguments = saved["arguments"]
        if arguments != self.arguments:
            differing = sorted(k for k in arguments.keys() | self.arguments.keys()
                               if arguments.get(k) != self.arguments.get(k))
            raise ValueError(f"{self.path} holds a run with other arguments ({', '.join(differing)}"
                             "); continue it with the same ones or give another directory")
        return _run(saved, self.path / INDEX)

    def progress(self, method: str) -> MethodProgress | None:
        """``method``'s delta and state after its latest saved job, if it has one."""
        entry = self._index().get("methods", {}).get(method)
        if entry is None:
            return None
        return MethodProgress(
            facts=_entry_facts(entry), seconds=entry["seconds"],
            delta=ModelDelta.load(self.path / entry["delta"]),
            state=EngineState.load(self.path / entry["state"]),
            refused=tuple(entry.get("refused", ())),
            repaired=tuple((place, name) for place, name in entry.get("repaired", ())),
            refreshed=tuple((job, place) for job, place in entry.get("refreshed", ())),
            untaken=tuple(entry.get("untaken", ())))

    def save(self, run: LifelongRun, method: str, progress: MethodProgress) -> None:
        """Record ``run`` and where ``method`` stands after one of its jobs."""
        self.path.mkdir(parents=True, exist_ok=True)
        entries = self._index().get("methods", {})
        entries.setdefault(method, {})
        position = list(entries).index(method)
        delta_name = f"method{position}-facts{progress.facts}.delta.safetensors"
        state_name = f"method{position}-facts{progress.facts}.keys.safetensors"
        progress.delta.save(self.path / delta_name)
        progress.state.save(self.path / state_name)
        if self.keep_every and progress.facts % self.keep_every == 0:
            (self.path / KEPT).mkdir(exist_ok=True)
            progress.delta.save(self.path / KEPT / delta_name)
        entries[method] = {"facts": progress.facts, "seconds": progress.seconds,
                           "delta": delta_name, "state": state_name,
                           "refused": list(progress.refused),
                           "repaired": [list(pair) for pair in progress.repaired],
                           "refreshed": [list(pair) for pair in progress.refreshed],
                           "untaken": list(progress.untaken)}
        checkpoints = {name: m.checkpoints for name, m in run.methods.items()}
        write_json(self.path / INDEX, {
            "arguments": self.arguments, "dataset": run.dataset, "n": run.n,
            "batch": run.batch, "unedited": run.unedited.to_json(),
            "methods": {name: entry | {"checkpoints": [
                c.to_json() for c in checkpoints.get(name, [])]}
                for name, entry in entries.items()},
        })
        kept = {entry[kind] for entry in entries.values() for kind in ("delta", "state")}
        for stale in self.path.glob("method*.safetensors"):
            if stale.name not in kept:
                stale.unlink()

    def _index(self) -> dict:
        index = self.path / INDEX
        return json.loads(index.read_text(encoding="utf-8")) if index.exists() else {}


def read_run(path: Path) -> LifelongRun:
    """The run saved in directory ``path`` as its last saved job left it, whatever its
    arguments: every method that reached a checkpoint, stopped or finished.

    Raises ``ValueError`` naming the directory when it holds no saved run or one that
    cannot be read.
    """
    return _run(_saved_index(Path(path)), Path(path) / INDEX)


def saved_arguments(path: Path) -> dict[str, object]:
    """The arguments of the run saved in directory ``path``. Raises ``ValueError`` like
    ``read_run``."""
    return _saved_index(Path(path))["arguments"]


def saved_deltas(path: Path) -> dict[str, list[tuple[int, Path]]]:
    """Per method of the run saved in directory ``path``, its composed deltas on disk as
    (facts applied, file), fewest facts first: those kept in ``kept/`` and the latest.

    Raises ``ValueError`` like ``read_run``.
    """
    kept: dict[int, dict[int, Path]] = {}  # method position -> facts -> file
    for file in (Path(path) / KEPT).glob("*.delta.safetensors"):
        if match := _DELTA_NAME.fullmatch(file.name):
            kept.setdefault(int(match["position"]), {})[int(match["facts"])] = file
    deltas: dict[str, list[tuple[int, Path]]] = {}
    for position, (name, entry) in enumerate(_saved_index(Path(path))["methods"].items()):
        found = kept.get(position, {})
        if "delta" in entry:
            found.setdefault(_entry_facts(entry), Path(path) / entry["delta"])
        deltas[name] = sorted(found.items())
    return deltas


def _saved_index(path: Path) -> dict:
    """The index of the run saved in directory ``path``; ``ValueError`` when none is."""
    if not (path / INDEX).exists():
        raise ValueError(f"{path} holds no saved bench lifelong run (no {INDEX})")
    return _read_index(path)


def _entry_facts(entry: dict) -> int:
    """Facts a method's index entry has applied."""
    # Directories saved before every job was have the facts of the last checkpoint.
    return entry["facts"] if "facts" in entry else entry["checkpoints"][-1]["facts"]


def _read_index(path: Path) -> dict:
    index = path / INDEX
    try:
        saved = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the saved run {index}: {exc}") from exc
    if not isinstance(saved, dict) or "arguments" not in saved:
        raise ValueError(f"cannot read the saved run {index}: it names no arguments")
    return saved


def _run(saved: dict, index: Path) -> LifelongRun:
    missing = [key for key in _RUN_KEYS if key not in saved]
    if missing:
        raise ValueError(f"cannot read the saved run {index}: it lacks {', '.join(missing)}")
    run = LifelongRun(dataset=saved["dataset"], n=saved["n"], batch=saved["batch"],
                      unedited=Checkpoint.from_json(saved["unedited"]))
    for name, method in saved["methods"].items():
        if method["checkpoints"]:  # a method not yet at its first checkpoint has none
            checkpoints = [Checkpoint.from_json(c) for c in method["checkpoints"]]
            # Facts refused, canaries repaired or facts refreshed after the last
            # checkpoint belong to no measurement yet.
            last = checkpoints[-1].facts
            refused = [p for p in method.get("refused", []) if p <= last]
            repaired = [(p, canary) for p, canary in method.get("repaired", []) if p <= last]
            refreshed = [(job, p) for job, p in method.get("refreshed", []) if job <= last]
            run.methods[name] = MethodRun(checkpoints, refused=refused, repaired=repaired,
                                          refreshed=refreshed)
    return run

