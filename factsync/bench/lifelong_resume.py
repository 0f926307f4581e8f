"""A ``bench lifelong`` run that survives being stopped: its state after each job.

A stream of a thousand facts runs for hours. After every job the run directory gets
what continuing needs: every checkpoint measured so far, and per method the composed
delta of its applied jobs with the keys they wrote (the engine's per-version state). A
later run with the same arguments starts from there: finished methods are not run
again, and an unfinished one applies its saved delta, restores its engine state and goes
on with the next job. The unedited model is not measured again either.

Files are written before the index that names them, and the index is replaced
atomically, so a run stopped at any moment loses at most the job it was running.
Asked to, the directory also keeps each method's composed delta, engine state and index
entry every so many facts in ``kept/``, so that how the stream's harm grew can be
measured afterwards (``bench damage --since``), and so that another run can branch off
at such a point: the same stream to there, other methods after it (``branch``). A stretch
of a long stream can then be edited two ways from one history in minutes.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from factsync.bench.job_fluency import JobReading
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
BRANCHED = "branched_from"
"""The index key naming the run and facts a branched run started from."""
# What may differ between a run and one branched off it: what runs after the branch point.
_BRANCH_MAY_CHANGE = {"methods", "checkpoint_every"}


class RunDirectory:
    """The saved state of one ``bench lifelong`` run (a ``lifelong.RunStore``).

    ``arguments`` are what makes two runs the same run (records, methods, sizes, model,
    engine settings); a directory saved with other arguments is refused rather than
    continued with the wrong ones. With ``keep_every``, a method's composed delta, engine
    state and index entry after every multiple of that many facts stay in ``kept/``
    under the same names.
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
            untaken=tuple(entry.get("untaken", ())),
            job_fluency=tuple(JobReading.from_json(r) for r in entry.get("job_fluency", ())))

    def save(self, run: LifelongRun, method: str, progress: MethodProgress) -> None:
        """Record ``run`` and where ``method`` stands after one of its jobs."""
        self.path.mkdir(parents=True, exist_ok=True)
        index = self._index()
        entries = index.get("methods", {})
        entries.setdefault(method, {})
        position = list(entries).index(method)
        delta_name = f"method{position}-facts{progress.facts}.delta.safetensors"
        state_name = f"method{position}-facts{progress.facts}.keys.safetensors"
        progress.delta.save(self.path / delta_name)
        progress.state.save(self.path / state_name)
        entries[method] = {"facts": progress.facts, "seconds": progress.seconds,
                           "delta": delta_name, "state": state_name,
                           "refused": list(progress.refused),
                           "repaired": [list(pair) for pair in progress.repaired],
                           "refreshed": [list(pair) for pair in progress.refreshed],
                           "untaken": list(progress.untaken),
                           "job_fluency": [r.to_json() for r in progress.job_fluency]}
        if self.keep_every and progress.facts % self.keep_every == 0:
            (self.path / KEPT).mkdir(exist_ok=True)
            progress.delta.save(self.path / KEPT / delta_name)
            progress.state.save(self.path / KEPT / state_name)
            write_json(self.path / KEPT / _entry_name(position, progress.facts),
                       entries[method])
        checkpoints = {name: m.checkpoints for name, m in run.methods.items()}
        self._write_index(run.dataset, run.n, run.batch, run.unedited.to_json(), {
            name: entry | {"checkpoints": [c.to_json() for c in checkpoints.get(name, [])]}
            for name, entry in entries.items()}, branched=index.get(BRANCHED))
        kept = {entry[kind] for entry in entries.values() for kind in ("delta", "state")}
        for stale in self.path.glob("method*.safetensors"):
            if stale.name not in kept:
                stale.unlink()

    def branch(self, source: Path, facts: int, methods: Sequence[str]) -> None:
        """Start this directory's run where the run saved in ``source`` stood after
        ``facts`` facts: the same stream to there, ``methods`` (one per method of
        ``source``, in its order) from there on.

        Each method of ``source`` must have kept its delta, engine state and entry at
        ``facts`` (``keep_every``), and the two runs' arguments may differ only in the
        methods and the checkpoint interval. A directory already branched from the same
        point is left as it is, so that a stopped branch goes on; one holding any other
        run is refused. Raises ``ValueError`` naming what does not fit.
        """
        source = Path(source)
        here = self._index()
        wanted = {"run": str(source.resolve()), "facts": facts}
        if here:
            if here.get(BRANCHED) == wanted:
                return
            raise ValueError(f"{self.path} already holds a run; branch into an empty directory")
        saved = _saved_index(source)
        differing = sorted(key for key in saved["arguments"].keys() | self.arguments.keys()
                           if key not in _BRANCH_MAY_CHANGE
                           and saved["arguments"].get(key) != self.arguments.get(key))
        if differing:
            raise ValueError(f"{source} holds a run with other arguments ({', '.join(differing)}"
                             "); a branch may change only --methods and --checkpoint-every")
        if len(methods) != len(saved["methods"]):
            raise ValueError(f"{source} ran {len(saved['methods'])} methods; branch with as "
                             f"many, got {len(methods)}")
        kept = [source / KEPT / _entry_name(position, facts) for position in range(len(methods))]
        for position, entry_file in enumerate(kept):
            if not entry_file.exists():  # checked first: a refused branch writes nothing
                raise ValueError(f"{source} kept no delta, state and entry of method "
                                 f"{position} after {facts} facts (bench lifelong --keep-every)")
        self.path.mkdir(parents=True, exist_ok=True)
        entries = {}
        for method, entry_file, origin in zip(methods, kept, saved["methods"].values(),
                                              strict=True):
            entry = json.loads(entry_file.read_text(encoding="utf-8"))
            for kind in ("delta", "state"):
                shutil.copyfile(source / KEPT / entry[kind], self.path / entry[kind])
            entries[method] = entry | {"checkpoints": [
                c for c in origin["checkpoints"] if c["facts"] <= facts]}
        self._write_index(saved["dataset"], saved["n"], saved["batch"], saved["unedited"],
                          entries, branched=wanted)

    def _write_index(self, dataset: str, n: int, batch: int, unedited: dict,
                     methods: dict[str, dict], *, branched: dict | None) -> None:
        """Replace the index; ``branched``: where a branched run started from."""
        write_json(self.path / INDEX, {
            "arguments": self.arguments, "dataset": dataset, "n": n, "batch": batch,
            "unedited": unedited, "methods": methods} | ({BRANCHED: branched} if branched else {}))

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


def _entry_name(position: int, facts: int) -> str:
    """The name of a method's index entry kept in ``kept/``."""
    return f"method{position}-facts{facts}.json"


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
            # Facts refused, canaries repaired, facts refreshed or fluency read after
            # the last checkpoint belong to no measurement yet.
            last = checkpoints[-1].facts
            refused = [p for p in method.get("refused", []) if p <= last]
            repaired = [(p, canary) for p, canary in method.get("repaired", []) if p <= last]
            refreshed = [(job, p) for job, p in method.get("refreshed", []) if job <= last]
            readings = [JobReading.from_json(r) for r in method.get("job_fluency", [])]
            run.methods[name] = MethodRun(checkpoints, refused=refused, repaired=repaired,
                                          refreshed=refreshed,
                                          job_fluency=[r for r in readings if r.facts <= last])
    return run

