"""Processes sharing the machine's cores: each later one takes its share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARE = """
import sys, torch
from factsync.threads import share_cores
chosen = share_cores(__import__("pathlib").Path(sys.argv[1]))
print(chosen, torch.get_num_threads(), flush=True)
sys.stdin.readline()  # hold the registration until the test says so
"""


def start(users: Path, **env: str) -> tuple[subprocess.Popen, list[int]]:
    """A process that registers under ``users``; it and its (chosen, torch) threads."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("FACTSYNC_THREADS", "OMP_NUM_THREADS")} | env
    process = subprocess.Popen([sys.executable, "-c", SHARE, str(users)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=environment)
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return process, [int(x) for x in line.split()]


def finish(process: subprocess.Popen) -> None:
    process.communicate("\n", timeout=30)


def test_a_process_started_beside_another_takes_half_the_cores(tmp_path):
    users = tmp_path / "cpu-users"
    cores = os.cpu_count() or 1
    first, first_threads = start(users)
    assert first_threads == [cores, cores]
    second, second_threads = start(users)
    assert second_threads == [max(1, cores // 2)] * 2
    finish(first)
    finish(second)
    third, third_threads = start(users)  # the others have exited: all cores again
    assert third_threads == [cores, cores]
    finish(third)
    assert not list(users.iterdir())  # every exited process's file was swept or reused


def test_the_file_of_a_process_that_died_does_not_count(tmp_path):
    users = tmp_path / "cpu-users"
    users.mkdir()
    (users / "999999999").write_text("")  # no process holds its lock
    process, threads = start(users)
    assert threads[0] == (os.cpu_count() or 1)
    assert not (users / "999999999").exists()
    finish(process)


def test_an_operators_thread_count_wins(tmp_path):
    process, threads = start(tmp_path / "cpu-users", FACTSYNC_THREADS="1")
    assert threads == [1, 1]
    finish(process)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_is_named(tmp_path, value):
    users = tmp_path / "cpu-users"
    process = subprocess.run([sys.executable, "-c", SHARE, str(users)], input="\n",
                             capture_output=True, text=True, timeout=120,
                             env=os.environ | {"FACTSYNC_THREADS": value})
    assert process.returncode != 0
    assert f"FACTSYNC_THREADS must be a whole number of threads of at least 1, got " \
           f"{value!r}" in process.stderr
