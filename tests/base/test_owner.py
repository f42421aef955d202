"""The owner marker of a run folder (`core.owner`): two workers (plain calls) on one folder;
the second takes it over and the first's next check refuses it in one line."""

from __future__ import annotations

import pytest

from pneumolib.base.owner import TakenOver, check_owner, claim_run, run_owner


def test_the_second_claim_takes_the_folder_and_the_first_is_refused(tmp_path) -> None:
    run = tmp_path / "sweep" / "bs4_lr0.001"
    first = claim_run(run, trial=3)  # creates the folder
    check_owner(run, first)  # its own: no error
    second = claim_run(run, trial=7)  # the point taken over from a hung worker
    assert first != second and run_owner(run) == second
    assert first.startswith("trial 3 on ") and second.startswith("trial 7 on ")
    with pytest.raises(TakenOver) as err:
        check_owner(run, first)
    msg = str(err.value)
    assert msg == f"{run}: {first} was taken over by {second}; this worker stops"
    check_owner(run, second)
    assert claim_run(run, trial=3) != first  # the same trial number again: a new token


def test_a_missing_or_unreadable_marker_belongs_to_nobody(tmp_path) -> None:
    token = claim_run(tmp_path, trial=1)
    (tmp_path / "owner.json").write_text("{not json")
    assert run_owner(tmp_path) is None
    with pytest.raises(TakenOver, match="by nobody"):
        check_owner(tmp_path, token)
    (tmp_path / "owner.json").unlink()
    with pytest.raises(TakenOver, match=r"owner.json is gone\); this worker stops$"):
        check_owner(tmp_path, token)
