"""A ``bench lifelong`` run stopped after a checkpoint goes on from it when started again."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from factsync.bench.canary_facts import pick_canaries
from factsync.bench.lifelong import LifelongRun, run_lifelong
from factsync.bench.lifelong_merge import merge_runs
from factsync.bench.lifelong_report import from_json, to_json
from factsync.bench.lifelong_resume import INDEX, KEPT, RunDirectory, read_run, saved_deltas
from factsync.bench.lifelong_scoring import METRICS, Yardstick
from factsync.cli import main
from factsync.editing.delta import ModelDelta
from factsync.evaluation.suites import load_cases, prepare_suite

FLUENCY = [
    "Once upon a time, in 1998, scientists found a new city in the north.",
    "Here is how to write a letter: Dear customer, thank you for your order.",
]
ARGUMENTS = {"n": 6, "batch": 2, "methods": "memit,again"}


class Stopped(Exception):
    """The run was stopped (as by a kill) after a checkpoint."""


def _run(loaded, engine, yardstick, store, *, stop_after: int | None = None,
         checkpoint_every: int = 2, refuse_canary_loss: bool = False) -> LifelongRun:
    seen = []

    def stop(run: LifelongRun) -> None:
        seen.append(run)
        if len(seen) == stop_after:
            raise Stopped

    # Two methods, so that one can be finished and the other midway when the run stops.
    return run_lifelong(
        loaded, yardstick, {"memit": engine.settings, "again": engine.settings},
        statistics=engine.statistics, contexts=engine.contexts, batch_size=2,
        checkpoint_every=checkpoint_every, on_checkpoint=stop, store=store,
        refuse_canary_loss=refuse_canary_loss)


@pytest.fixture
def bench(tiny_loaded, tiny_engine, counterfact_file):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    cases = load_cases("counterfact", counterfact_file)
    suite = prepare_suite(loaded, "counterfact", cases[:6], neighbours_per_fact=1)
    canaries = pick_canaries(loaded, [case.request for case in cases[6:]])
    # The held-out set is the fluency texts reversed: any texts do, and every metric is
    # then measured, so a resumed run must give them all back.
    return loaded, engine, Yardstick.prepare(loaded, suite, canaries, FLUENCY,
                                             held_out_texts=FLUENCY[::-1])


@pytest.mark.parametrize("stop_after", [1, 4])  # in the first method; in the second
def test_a_stopped_run_goes_on_to_the_scores_of_one_never_stopped(bench, tmp_path, stop_after):
    loaded, engine, yardstick = bench
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    whole = _run(loaded, engine, yardstick, RunDirectory(tmp_path / "whole", ARGUMENTS))

    store = RunDirectory(tmp_path / "stopped", ARGUMENTS)
    with pytest.raises(Stopped):
        _run(loaded, engine, yardstick, store, stop_after=stop_after)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    saved = store.load()
    assert sum(len(m.checkpoints) for m in saved.methods.values()) == stop_after
    resumed = _run(loaded, engine, yardstick, store)

    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert resumed.unedited == whole.unedited  # measured once, read back as it was
    for name in ("memit", "again"):
        mine, theirs = resumed.methods[name].checkpoints, whole.methods[name].checkpoints
        assert [c.facts for c in mine] == [c.facts for c in theirs] == [2, 4, 6]
        for ours, reference in zip(mine, theirs, strict=True):
            for metric in set(METRICS) - {"seconds_per_fact"}:
                # The saved delta is every job's composed; applied at once it rounds
                # differently from job after job.
                assert ours.values[metric] == pytest.approx(
                    reference.values[metric], rel=1e-3, abs=1e-3), (name, ours.facts, metric)
        mine_read, theirs_read = resumed.methods[name].job_fluency, whole.methods[name].job_fluency
        assert [r.facts for r in mine_read] == [r.facts for r in theirs_read] == [2, 4, 6]
        for ours, reference in zip(mine_read, theirs_read, strict=True):
            assert ours.later_tokens == pytest.approx(reference.later_tokens, abs=1e-3)
            assert ours.first_token == pytest.approx(reference.first_token, abs=1e-3)
    kept = sorted(p.name for p in store.path.iterdir())
    assert kept == ["method0-facts6.delta.safetensors", "method0-facts6.keys.safetensors",
                    "method1-facts6.delta.safetensors", "method1-facts6.keys.safetensors", INDEX]


def test_a_stopped_run_that_refuses_canary_losses_keeps_the_facts_it_refused(
    bench, tmp_path, counterfact_file
):
    loaded, engine, _ = bench
    cases = load_cases("counterfact", counterfact_file)[:6]
    suite = prepare_suite(loaded, "counterfact", cases, neighbours_per_fact=1)
    # The edited records as canaries, so that the edits that take are refused.
    yardstick = Yardstick.prepare(loaded, suite,
                                  pick_canaries(loaded, [c.request for c in cases]), FLUENCY)
    whole = _run(loaded, engine, yardstick, RunDirectory(tmp_path / "whole", ARGUMENTS),
                 refuse_canary_loss=True)
    assert whole.methods["memit"].refused  # otherwise this shows nothing

    store = RunDirectory(tmp_path / "stopped", ARGUMENTS)
    with pytest.raises(Stopped):  # midway through the first method
        _run(loaded, engine, yardstick, store, stop_after=2, refuse_canary_loss=True)
    assert store.progress("memit").refused == tuple(
        place for place in whole.methods["memit"].refused if place <= 4)
    resumed = _run(loaded, engine, yardstick, store, refuse_canary_loss=True)

    for name in ("memit", "again"):
        assert resumed.methods[name].refused == whole.methods[name].refused, name
    assert read_run(store.path).methods["again"].refused == whole.methods["again"].refused


class KilledAfterSaving(RunDirectory):
    """A run directory whose run is stopped (as by a kill) right after its nth save."""

    def __init__(self, path, arguments, *, saves: int) -> None:  # noqa: ANN001
        super().__init__(path, arguments)
        self.saves = saves

    def save(self, run, method, progress) -> None:  # noqa: ANN001
        super().save(run, method, progress)
        self.saves -= 1
        if self.saves == 0:
            raise Stopped


def test_a_run_stopped_between_checkpoints_loses_only_the_job_it_was_running(bench, tmp_path):
    loaded, engine, yardstick = bench
    whole = _run(loaded, engine, yardstick, RunDirectory(tmp_path / "whole", ARGUMENTS),
                 checkpoint_every=4)
    killed = KilledAfterSaving(tmp_path / "stopped", ARGUMENTS, saves=1)
    with pytest.raises(Stopped):
        _run(loaded, engine, yardstick, killed, checkpoint_every=4)
    store = RunDirectory(tmp_path / "stopped", ARGUMENTS)
    assert store.load().methods == {}  # no checkpoint yet, but the first job is kept
    assert store.progress("memit").facts == 2

    resumed = _run(loaded, engine, yardstick, store, checkpoint_every=4)

    assert resumed.unedited == whole.unedited
    for name in ("memit", "again"):
        mine, theirs = resumed.methods[name].checkpoints, whole.methods[name].checkpoints
        assert [c.facts for c in mine] == [c.facts for c in theirs] == [4, 6]
        for metric in set(METRICS) - {"seconds_per_fact"}:
            assert mine[-1].values[metric] == pytest.approx(
                theirs[-1].values[metric], rel=1e-3, abs=1e-3), (name, metric)


def test_a_run_directory_keeps_the_delta_every_so_many_facts_when_asked(bench, tmp_path):
    loaded, engine, yardstick = bench
    store = RunDirectory(tmp_path, ARGUMENTS, keep_every=4)
    _run(loaded, engine, yardstick, store)
    kept = sorted(p.name for p in (tmp_path / KEPT).iterdir())
    assert kept == [f"method{i}-facts4.{kind}" for i in (0, 1)
                    for kind in ("delta.safetensors", "json", "keys.safetensors")]
    at_four = ModelDelta.load(tmp_path / KEPT / kept[0])
    final = ModelDelta.load(tmp_path / "method0-facts6.delta.safetensors")
    assert at_four.layers.keys() == final.layers.keys()
    layout = final.layout
    assert not all(torch.allclose(at_four.layers[path].matrix(layout), update.matrix(layout))
                   for path, update in final.layers.items())


def _branch_run(loaded, engine, yardstick, store, methods) -> LifelongRun:  # noqa: ANN001
    return run_lifelong(loaded, yardstick, methods, statistics=engine.statistics,
                        contexts=engine.contexts, batch_size=2, checkpoint_every=2, store=store)


def test_a_branch_goes_on_from_the_point_it_branched_at_with_its_own_methods(bench, tmp_path):
    loaded, engine, yardstick = bench
    whole = _run(loaded, engine, yardstick, RunDirectory(tmp_path / "whole", ARGUMENTS,
                                                         keep_every=2))
    settings = engine.settings
    gentler = replace(settings, spread=replace(settings.spread, update_fraction=0.05))
    branch = RunDirectory(tmp_path / "branch", ARGUMENTS | {"methods": "memit,gentler"})
    branch.branch(tmp_path / "whole", 2, ["memit", "gentler"])

    branched = _branch_run(loaded, engine, yardstick, branch,
                           {"memit": settings, "gentler": gentler})

    assert branched.unedited == whole.unedited
    same, reference = branched.methods["memit"].checkpoints, whole.methods["memit"].checkpoints
    assert [c.facts for c in same] == [2, 4, 6]
    assert same[0] == reference[0]  # the history: read back, not measured again
    for ours, theirs in zip(same[1:], reference[1:], strict=True):
        for metric in set(METRICS) - {"seconds_per_fact"}:
            assert ours.values[metric] == pytest.approx(
                theirs.values[metric], rel=1e-3, abs=1e-3), (ours.facts, metric)
    # The second method ran "again"'s first two facts, then the gentler spread.
    other, before = branched.methods["gentler"].checkpoints, whole.methods["again"].checkpoints
    assert other[0] == before[0]
    assert other[-1].values["norm_growth_mean"] < before[-1].values["norm_growth_mean"]
    assert json.loads((branch.path / INDEX).read_text())["branched_from"] == {
        "run": str((tmp_path / "whole").resolve()), "facts": 2}


def test_a_branch_is_refused_what_it_cannot_start_from(bench, tmp_path):
    loaded, engine, yardstick = bench
    _run(loaded, engine, yardstick, RunDirectory(tmp_path / "whole", ARGUMENTS, keep_every=4))
    names = ["memit", "again"]

    with pytest.raises(ValueError, match=r"other arguments \(batch\); a branch may change"):
        RunDirectory(tmp_path / "a", ARGUMENTS | {"batch": 3}).branch(tmp_path / "whole", 4,
                                                                     names)
    with pytest.raises(ValueError, match="kept no delta, state and entry of method 0 after 2"):
        RunDirectory(tmp_path / "b", ARGUMENTS).branch(tmp_path / "whole", 2, names)
    with pytest.raises(ValueError, match="ran 2 methods; branch with as many, got 1"):
        RunDirectory(tmp_path / "c", ARGUMENTS).branch(tmp_path / "whole", 4, ["memit"])
    with pytest.raises(ValueError, match="holds no saved bench lifelong run"):
        RunDirectory(tmp_path / "d", ARGUMENTS).branch(tmp_path / "nothing", 4, names)

    branch = RunDirectory(tmp_path / "e", ARGUMENTS)
    branch.branch(tmp_path / "whole", 4, names)
    branch.branch(tmp_path / "whole", 4, names)  # the same point again: a stopped branch
    assert branch.progress("again").facts == 4
    with pytest.raises(ValueError, match="already holds a run; branch into an empty"):
        branch.branch(tmp_path / "whole", 6, names)


def test_the_command_branches_only_with_both_options_and_a_state(tmp_path, counterfact_file,
                                                                 capsys):
    code = main(["bench", "lifelong", "--data", str(counterfact_file), "--n", "4",
                 "--batch", "2", "--model", str(tmp_path / "no-model"),
                 "--state", str(tmp_path / "state"), "--branch-from", str(tmp_path)])
    assert code == 1
    assert "--branch-from and --branch-at go together, with --state" in capsys.readouterr().err


def test_saved_deltas_are_the_kept_ones_and_the_latest_per_method(bench, tmp_path):
    loaded, engine, yardstick = bench
    _run(loaded, engine, yardstick, RunDirectory(tmp_path, ARGUMENTS, keep_every=4))
    assert saved_deltas(tmp_path) == {
        name: [(4, tmp_path / KEPT / f"method{i}-facts4.delta.safetensors"),
               (6, tmp_path / f"method{i}-facts6.delta.safetensors")]
        for i, name in enumerate(["memit", "again"])}
    with pytest.raises(ValueError, match="holds no saved bench lifelong run"):
        saved_deltas(tmp_path / KEPT)


def test_keeping_deltas_needs_a_saved_run(tmp_path, counterfact_file, capsys):
    code = main(["bench", "lifelong", "--data", str(counterfact_file), "--n", "4",
                 "--batch", "2", "--model", str(tmp_path / "no-model"), "--keep-every", "2"])
    assert code == 1
    assert "--keep-every needs --state" in capsys.readouterr().err


def test_a_run_saved_with_other_arguments_is_refused(bench, tmp_path):
    loaded, engine, yardstick = bench
    with pytest.raises(Stopped):
        _run(loaded, engine, yardstick, RunDirectory(tmp_path, ARGUMENTS), stop_after=1)

    other = RunDirectory(tmp_path, ARGUMENTS | {"batch": 3, "seed": 1})
    with pytest.raises(ValueError, match=r"other arguments \(batch, seed\)"):
        other.load()


def test_the_command_refuses_a_saved_run_of_other_arguments_before_loading_anything(
    tmp_path, counterfact_file, capsys
):
    state = tmp_path / "state"
    state.mkdir()
    (state / INDEX).write_text(json.dumps({"arguments": {"n": 3}}))
    code = main([
        "bench", "lifelong", "--data", str(counterfact_file), "--n", "4", "--batch", "2",
        "--model", str(tmp_path / "no-model"), "--state", str(state),
    ])
    assert code == 1
    assert f"{state} holds a run with other arguments" in capsys.readouterr().err


def test_an_unreadable_saved_run_is_named(tmp_path):
    (tmp_path / INDEX).write_text("{not json")
    with pytest.raises(ValueError, match=f"cannot read the saved run {tmp_path / INDEX}"):
        RunDirectory(tmp_path, ARGUMENTS).load()
    (tmp_path / INDEX).write_text(json.dumps({"arguments": {}, "n": 6}))
    with pytest.raises(ValueError, match="it lacks dataset, batch, unedited, methods"):
        read_run(tmp_path)
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'} holds no saved bench"):
        read_run(tmp_path / "empty")


def test_runs_of_the_same_records_make_one_report(bench, tmp_path, capsys):
    loaded, engine, yardstick = bench
    first, later = tmp_path / "first", tmp_path / "later"
    with pytest.raises(Stopped):  # memit's stream saved, the second method not begun
        _run(loaded, engine, yardstick, RunDirectory(first, ARGUMENTS), stop_after=1,
             checkpoint_every=6)
    _saved_copy(first, later, _renamed("later"))  # as a later run of another method
    report, plot = tmp_path / "report.json", tmp_path / "report.png"

    code = main(["bench", "lifelong-report", str(first), str(later),
                 "--json", str(report), "--plot", str(plot)])

    assert code == 0
    printed = capsys.readouterr().out
    assert "memit, by checkpoint" in printed and "later, by checkpoint" in printed
    numbers = json.loads(report.read_text())
    alone = to_json(read_run(first))
    assert numbers["unedited"] == alone["unedited"]
    assert list(numbers["methods"]) == ["memit", "later"]
    assert numbers["methods"]["memit"] == numbers["methods"]["later"] == alone["methods"]["memit"]
    assert [c["facts"] for c in alone["methods"]["memit"]["checkpoints"]] == [6]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_a_report_a_run_wrote_stands_for_the_run(bench, tmp_path, capsys):
    loaded, engine, yardstick = bench
    directory, later = tmp_path / "run", tmp_path / "later"
    run = _run(loaded, engine, yardstick, RunDirectory(directory, ARGUMENTS))
    written = tmp_path / "written.json"
    written.write_text(json.dumps(to_json(run)))
    read = from_json(json.loads(written.read_text()))
    assert read.unedited == run.unedited
    for name, method in run.methods.items():
        assert read.methods[name].final == method.final  # intervals included
        assert ([c.values for c in read.methods[name].checkpoints]
                == [c.values for c in method.checkpoints])
    _saved_copy(directory, later, _renamed("later"))
    assert main(["bench", "lifelong-report", str(written), str(later)]) == 0
    assert "later, by checkpoint" in capsys.readouterr().out
    written.write_text(json.dumps({"n": 6}))
    assert main(["bench", "lifelong-report", str(written)]) == 1
    assert "cannot read the report" in capsys.readouterr().err


def _renamed(name: str):  # noqa: ANN202
    """A change to a saved index: its first method under ``name``, the rest dropped."""
    def change(saved: dict) -> None:
        saved["methods"] = {name: next(iter(saved["methods"].values()))}
    return change


def _stopped_at_first_checkpoint(bench, path):  # noqa: ANN001, ANN202
    """``path``, where a run was saved and stopped after its first checkpoint."""
    loaded, engine, yardstick = bench
    with pytest.raises(Stopped):
        _run(loaded, engine, yardstick, RunDirectory(path, ARGUMENTS), stop_after=1)
    return path


def _saved_copy(source, target, change) -> None:  # noqa: ANN001
    """A copy of the saved run in ``source`` with its index changed by ``change``."""
    target.mkdir()
    saved = json.loads((source / INDEX).read_text())
    change(saved)
    (target / INDEX).write_text(json.dumps(saved))


def test_a_saved_run_reads_back_the_refusals_and_repairs_its_checkpoints_measured(
    bench, tmp_path
):
    first = _stopped_at_first_checkpoint(bench, tmp_path / "first")

    def gated_later(saved: dict) -> None:
        # Saved after a job past the checkpoint at 2 facts: one of each before, one after.
        saved["methods"]["memit"]["refused"] = [1, 3]
        saved["methods"]["memit"]["repaired"] = [[1, "Paris is in France"],
                                                 [3, "Rome is in Italy"]]
        saved["methods"]["memit"]["refreshed"] = [[2, 1], [3, 2]]

    _saved_copy(first, tmp_path / "later", gated_later)
    later = read_run(tmp_path / "later").methods["memit"]
    assert later.refused == [1]
    assert later.repaired == [(1, "Paris is in France")]
    assert later.refreshed == [(2, 1)]


def test_runs_of_other_records_are_not_one_report(bench, tmp_path):
    first = _stopped_at_first_checkpoint(bench, tmp_path / "first")

    def other_n(saved: dict) -> None:
        _renamed("other")(saved)
        saved["n"] = 8

    def other_unedited(saved: dict) -> None:
        _renamed("other")(saved)
        saved["unedited"]["values"]["efficacy_success"] += 0.1

    for name, change in [("n", other_n), ("unedited", other_unedited),
                         ("same", lambda saved: None)]:
        _saved_copy(first, tmp_path / name, change)
    runs = {str(first): read_run(first)}
    with pytest.raises(ValueError, match=r"n 8 against 6"):
        merge_runs(runs | {"n": read_run(tmp_path / "n")})
    with pytest.raises(ValueError, match=r"not a run of the same records .*unedited efficacy"):
        merge_runs(runs | {"unedited": read_run(tmp_path / "unedited")})
    # The same method twice (as under other key statistics) keeps both, named apart.
    same = read_run(tmp_path / "same")
    merged = merge_runs(runs | {str(tmp_path / "same.json"): same})
    assert list(merged.methods) == ["memit", "memit (same)"]
    assert merged.methods["memit (same)"] is same.methods["memit"]
    with pytest.raises(ValueError, match=r"method memit \(same\) is in more than one run"):
        merge_runs(runs | {"same": same, "again/same": same})


def test_a_metric_only_one_run_measured_does_not_keep_them_apart(bench, tmp_path):
    first = _stopped_at_first_checkpoint(bench, tmp_path / "first")
    measured = read_run(first).unedited
    assert measured.values["held_out_perplexity_ratio"] is not None

    def without_held_out(saved: dict) -> None:
        _renamed("without")(saved)
        saved["unedited"]["values"]["held_out_perplexity_ratio"] = None
        saved["unedited"]["intervals"].pop("held_out_perplexity_ratio", None)

    def later(saved: dict) -> None:
        _renamed("later")(saved)
        saved["unedited"]["values"]["held_out_perplexity_ratio"] += 0.5

    _saved_copy(first, tmp_path / "without", without_held_out)
    _saved_copy(first, tmp_path / "later", later)
    without = read_run(tmp_path / "without")
    for runs in ({"without": without, "with": read_run(first)},
                 {"with": read_run(first), "without": without}):
        merged = merge_runs(runs)
        assert merged.unedited.values == measured.values
        assert merged.unedited.intervals == measured.intervals
    with pytest.raises(ValueError, match="unedited held_out_perplexity_ratio"):
        merge_runs({"first": read_run(first), "later": read_run(tmp_path / "later")})


def test_where_a_method_stands_keeps_the_canaries_it_repaired_and_the_facts_refreshed(
    bench, tmp_path
):
    store = RunDirectory(_stopped_at_first_checkpoint(bench, tmp_path / "run"), ARGUMENTS)
    saved = store.progress("memit")
    assert (saved.repaired, saved.refreshed, saved.untaken) == ((), (), ())
    changed = replace(saved, repaired=((1, "Paris is in France"),), refreshed=((3, 1),),
                      untaken=(2,))
    store.save(store.load(), "memit", changed)
    again = store.progress("memit")
    assert (again.repaired, again.refreshed, again.untaken) == (
        changed.repaired, changed.refreshed, changed.untaken)
