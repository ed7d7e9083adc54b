"""Where a process is in a torchrun run: `torchrun_env.place`, the one reader of torchrun's environment, for the
indexer and the trainer alike."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
from typer.testing import CliRunner

import indexer.shard
from indexer.shard import Rank, Shard
from pengi_search import torchrun_env
from pengi_search.cli import app
from pengi_search.errors import EXIT_USAGE, UsageError
from pengi_search.torchrun_env import Place, place

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def test_torchrun_sets_all_four_variables_and_each_is_taken_as_it_says():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert place(env) == Place(rank=5, world_size=8, local_rank=1, local_world_size=4, launched=True)


def test_without_world_size_the_process_is_the_runs_only_one_whatever_rank_is_left_in_the_environment():
    assert place({}) == place({"RANK": "3"}) == place({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == Place()
    assert Rank.from_env({"RANK": "3", "LOCAL_RANK": "1"}) is None  # the indexer indexes everything itself


def test_set_by_hand_without_local_rank_or_rank_the_run_is_on_one_machine_where_local_is_global():
    one_machine = Place(rank=1, world_size=2, local_rank=1, launched=True)
    assert place({"RANK": "1", "WORLD_SIZE": "2"}) == place({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == one_machine
    assert place({"WORLD_SIZE": "1"}) == Place(launched=True)  # one process knows its place without being told
    # The indexer and the trainer read it alike: the trainer took LOCAL_RANK 0 (GPU 0) for RANK 1 without it.
    rank = Rank.from_env({"RANK": "1", "WORLD_SIZE": "2"})
    assert (rank.shard, rank.local_rank) == (Shard(1, 2), 1)


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK=x: not a whole number 0, 1, 2, ..."),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1: not a whole number 0, 1, 2, ..."),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0: a count of processes is at least 1"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2: not below WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2: each process needs its RANK or LOCAL_RANK"),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=2: not below "),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}, "LOCAL_WORLD_SIZE=4: more than WORLD_SIZE=2"),
    ],
)
def test_values_torchrun_never_sets_are_refused_in_one_line_naming_the_variable(env: dict[str, str], said: str):
    with pytest.raises(UsageError) as refused:
        place(env)
    assert str(refused.value).startswith(said), refused.value
    assert str(refused.value).endswith("(torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)")


@pytest.mark.parametrize("command", [["index", "."], ["train", "config.yaml"]])
def test_a_bad_torchrun_environment_is_one_error_line_and_bad_usage_from_index_and_train(
    command: list[str], monkeypatch, tmp_path
):
    """The indexer said `bad torchrun environment (...): invalid literal for int() with base 10: 'x'` (exit 1);
    the trainer said Python's words alone."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("{}\n")
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, [*command, "--db", "lib.db"] if command[0] == "index" else command)
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stderr.startswith("error: RANK=x: not a whole number") and result.stderr.count("\n") == 1


def test_a_local_rank_left_in_the_environment_without_a_run_does_not_silence_a_failure(monkeypatch, tmp_path):
    """A process with LOCAL_RANK 1 leaves the saying of its failures to the machine's first: without WORLD_SIZE
    there is no first but itself, yet `train` ended well, without a word, on any mistake found before the run."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code == EXIT_USAGE and result.stderr.startswith("error: "), result.output


def _torchrun_place(monkeypatch, on_machine: int) -> None:
    """This process as the first of `on_machine` that torchrun started on this machine."""
    for name, value in {"WORLD_SIZE": str(on_machine), "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(on_machine))


def _listed(monkeypatch, *pids: int) -> None:
    """The machine's other processes of the run, as torchrun's list of its children gives them from now on."""
    monkeypatch.setattr(torchrun_env, "_machines_other_processes", lambda: list(pids))


def test_a_fellow_process_that_ended_before_it_was_listed_counts_as_ended(monkeypatch) -> None:
    """torchrun reaps a worker as it ends: one that ended before this one listed the machine's workers is not among
    them, and is missed by the count LOCAL_WORLD_SIZE gives (a rank waiting for it would wait for days)."""
    _torchrun_place(monkeypatch, 3)
    running = [os.getpid(), os.getppid()]  # processes that run (a listed fellow is looked up by its id)
    _listed(monkeypatch, *running)
    assert not torchrun_env.MachineSiblings.now().one_ended()
    _listed(monkeypatch, running[0])
    assert torchrun_env.MachineSiblings.now().one_ended()
    monkeypatch.setattr(torchrun_env, "_machines_other_processes", lambda: None)  # not known: nothing is said ended
    assert not torchrun_env.MachineSiblings.now().one_ended()


def test_a_fellow_process_torchrun_starts_after_the_listing_is_running_not_ended(monkeypatch) -> None:
    """torchrun starts a machine's workers one after another: the first may list them before the last is started.
    It counted as ended, and the first rank gave up the ranks' meeting at the end (`RanksNotMet`)."""
    _torchrun_place(monkeypatch, 3)
    _listed(monkeypatch, os.getppid())
    siblings = torchrun_env.MachineSiblings.now()
    late = subprocess.Popen(["sleep", "60"])
    try:
        _listed(monkeypatch, os.getppid(), late.pid)
        assert not siblings.one_ended()
    finally:
        late.kill()
        late.wait()
    _listed(monkeypatch, os.getppid())  # torchrun reaped it: seen running once, it counts as ended
    assert siblings.one_ended()


def test_the_ranks_meeting_waits_for_a_fellow_process_torchrun_started_after_the_first_look(monkeypatch) -> None:
    """Missing at the first look at the end, a process of the machine is looked for again after the grace: one
    that torchrun started meanwhile runs, and the meeting goes on until every rank is there."""
    _torchrun_place(monkeypatch, 2)
    looks: list[int] = []

    def listed() -> list[int]:  # started between the first look and the second
        looks.append(len(looks))
        return [] if len(looks) <= 2 else [os.getppid()]  # the first listing is the rank's own, as it starts

    monkeypatch.setattr(torchrun_env, "_machines_other_processes", listed)
    monkeypatch.setattr(indexer.shard, "_GRACE_S", 0.1)
    rank = Rank.from_env()
    met = threading.Event()
    monkeypatch.setattr(Rank, "_meet", lambda self, failed: met.wait(10))
    threading.Timer(1.0, met.set).start()  # every rank is there a while after the grace
    rank.barrier()
    assert len(looks) > 3
