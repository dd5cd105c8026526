"""Attacks in chunks (`tfpurify.evaluation.chunks`): sized by time, kept, resumed, remembered; shared between
processes through a `ChunkBoard`: every range attacked once, gathered in order whoever attacked it, a helper
never waits, a range whose process is gone or failed is free again."""

import json
import subprocess

import numpy as np
import pytest

from tfpurify.evaluation import chunks as chunks_mod
from tfpurify.evaluation.chunks import CHUNK_MIN, CHUNK_START, ChunkBoard, Chunks, NothingToHelpWith


class _Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def _attack(clock, calls, seconds_per_image=1.0):
    def attack(lo, hi):
        calls.append((lo, hi))
        clock.now += seconds_per_image * (hi - lo)
        return np.arange(lo, hi) * 10, np.arange(lo, hi) % 2 == 0
    return attack


def test_chunks_are_sized_by_the_time_per_image_and_kept_after_each(monkeypatch):
    clock, calls, saved = _Clock(), [], []
    monkeypatch.setattr(chunks_mod, "time", clock)
    state = {}
    chunks = Chunks(state, lambda: saved.append(dict(state["part"])), seconds=10)
    values, even = chunks.run("pgd", _attack(clock, calls), 30)
    # 4 images first, then 10 s / (1 s per image) = 10 images a chunk
    assert calls == [(0, CHUNK_START), (4, 14), (14, 24), (24, 30)]
    np.testing.assert_array_equal(values, np.arange(30) * 10)
    np.testing.assert_array_equal(even, np.arange(30) % 2 == 0)
    assert [s["done"] for s in saved] == [4, 14, 24] and state == {"done": {}}  # nothing kept after the last
    calls.clear()
    slow = Chunks({}, lambda: None, seconds=10)
    slow.run("pgd", _attack(clock, calls, seconds_per_image=100.0), 9)
    assert calls == [(0, 4), (4, 4 + CHUNK_MIN), (6, 8), (8, 9)]  # never fewer than CHUNK_MIN images
    calls.clear()
    fast = Chunks({}, lambda: None, seconds=10)
    fast.run("pgd", _attack(clock, calls, seconds_per_image=1e-3), 5000)
    assert calls == [(0, 4), (4, 5000)]  # the rest at once


def test_a_kept_part_resumes_with_its_next_chunk_and_kept_results_are_not_attacked_again(monkeypatch):
    clock, calls = _Clock(), []
    monkeypatch.setattr(chunks_mod, "time", clock)

    class Killed(Exception):
        pass

    state = {}

    def checkpoint():
        if state["part"]["done"] == 14:
            raise Killed()

    try:
        Chunks(state, checkpoint, seconds=10).run("pgd", _attack(clock, calls), 30)
    except Killed:
        pass
    assert calls == [(0, 4), (4, 14)]
    calls.clear()
    part = dict(state["part"])
    resumed = Chunks(state, lambda: None, seconds=10)
    values, even = resumed.run("pgd", _attack(clock, calls), 30, keep=True)
    assert calls == [(14, 24), (24, 30)]  # the next chunk, sized as the killed run had sized it
    np.testing.assert_array_equal(values, np.arange(30) * 10)
    np.testing.assert_array_equal(even, np.arange(30) % 2 == 0)
    calls.clear()
    Chunks({"part": dict(part)}, lambda: None, seconds=10).run("apgd", _attack(clock, calls), 30)
    assert calls[0] == (0, 4)  # another attack's part is not this one's
    calls.clear()
    Chunks({"part": dict(part)}, lambda: None, seconds=10).run("pgd", _attack(clock, calls), 20)
    assert calls[0] == (0, 4)  # nor one over other images
    calls.clear()
    again, _ = resumed.run("pgd", _attack(clock, calls), 30, keep=True)  # kept: not attacked again
    assert calls == [] and np.array_equal(again, values)
    resumed.forget()
    assert state == {}  # the kept result dropped
    unchunked = Chunks({}, None, seconds=10)  # no checkpoint to keep a chunk with: all at once
    unchunked.run("pgd", _attack(clock, calls), 30)
    assert calls == [(0, 30)]


# Shared between processes

N = 11
INPUTS = ("pgd {}", np.arange(N, dtype=np.float32), np.zeros(N, np.int64))


def _recorded(calls):
    def attack(lo, hi):  # a result per image that says which image it was
        calls.append((lo, hi))
        return np.arange(lo, hi) * 2, np.arange(lo, hi) % 2 == 0
    return attack


def _chunks(board, helper=False, kept=None):
    checkpoints = kept if kept is not None else []
    return Chunks({}, lambda: checkpoints.append(1), 1e-9, board, helper)  # CHUNK_START images, then CHUNK_MIN


def _expected():
    return np.arange(N) * 2, np.arange(N) % 2 == 0


def _same(got):
    for a, b in zip(got, _expected()):
        np.testing.assert_array_equal(a, b)


def test_a_helper_takes_the_ranges_the_owner_does_not_hold_and_the_owner_gathers_them(tmp_path):
    board = ChunkBoard(tmp_path)
    owner_calls, helper_calls, raised = [], [], []
    helper_attack = _recorded(helper_calls)

    def owner_attack(lo, hi):  # while the owner attacks its first range, the helper works on the board
        try:
            _chunks(board, helper=True).run("step 0", helper_attack, N, inputs=INPUTS)
        except NothingToHelpWith:
            raised.append(True)  # only the owner's range was left, and it holds it: the helper does not wait
        return _recorded(owner_calls)(lo, hi)

    kept = []
    _same(_chunks(board, kept=kept).run("step 0", owner_attack, N, inputs=INPUTS))
    assert owner_calls == [(0, 4)] and raised == [True]
    assert helper_calls == [(4, 8), (8, 10), (10, 11)]  # its first chunk CHUNK_START images, then CHUNK_MIN
    assert len(kept) >= 2  # the owner kept its report as it gathered the ranges


def test_an_owner_gathers_a_finished_helper_s_ranges_without_attacking(tmp_path):
    board = ChunkBoard(tmp_path)
    helper_calls, owner_calls = [], []
    _same(_chunks(board, helper=True).run("step 0", _recorded(helper_calls), N, inputs=INPUTS))
    _same(_chunks(board).run("step 0", _recorded(owner_calls), N, inputs=INPUTS))
    assert owner_calls == [] and sorted(helper_calls)[0][0] == 0 and sorted(helper_calls)[-1][1] == N


def test_ranges_of_other_inputs_or_another_attack_are_never_mixed_in(tmp_path):
    board = ChunkBoard(tmp_path)
    _chunks(board, helper=True).run("step 0", lambda lo, hi: (np.full(hi - lo, -1), np.zeros(hi - lo, bool)), N,
                                    inputs=("pgd {}", INPUTS[1] + 1, INPUTS[2]))  # other images
    _chunks(board, helper=True).run("step 0", lambda lo, hi: (np.full(hi - lo, -1), np.zeros(hi - lo, bool)), N,
                                    inputs=("fgsm {}", *INPUTS[1:]))  # another attack
    calls = []
    _same(_chunks(board).run("step 0", _recorded(calls), N, inputs=INPUTS))
    assert sum(hi - lo for lo, hi in calls) == N


def test_a_range_held_by_a_process_that_is_gone_is_taken_over(tmp_path):
    board = ChunkBoard(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    first = board.attack("step 0", N, INPUTS)
    first.take(0, 4)  # held by this process: make it the gone one's
    ranges = json.loads((first.folder / "ranges.json").read_text())
    ranges[0]["holder"]["pid"] = gone.pid
    (first.folder / "ranges.json").write_text(json.dumps(ranges))
    calls = []
    _same(_chunks(board, helper=True).run("step 0", _recorded(calls), N, inputs=INPUTS))
    assert calls[0] == (0, 4)


def test_a_failed_attack_gives_its_range_back(tmp_path):
    board = ChunkBoard(tmp_path)

    def failing(lo, hi):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _chunks(board).run("step 0", failing, N, inputs=INPUTS)
    calls = []
    _same(_chunks(board, helper=True).run("step 0", _recorded(calls), N, inputs=INPUTS))  # nothing is left held
    assert calls[0] == (0, 4)


def test_without_a_board_or_inputs_chunks_run_as_before(tmp_path):
    calls = []
    _same(_chunks(None).run("step 0", _recorded(calls), N, inputs=INPUTS))
    _same(_chunks(ChunkBoard(tmp_path)).run("step 1", _recorded(calls), N))
    assert calls == [(0, 4), (4, 6), (6, 8), (8, 10), (10, 11)] * 2 and not any(tmp_path.iterdir())


def test_an_owner_whose_kept_part_ends_inside_a_done_range_takes_the_rest_of_it(tmp_path):
    board = ChunkBoard(tmp_path)
    _chunks(board, helper=True).run("step 0", _recorded([]), N, inputs=INPUTS)  # ranges 0:4, 4:6, ...
    state = {"part": {"key": "step 0", "n": N, "done": 5, "size": 2, "arrays": [a[:5] for a in _expected()]}}
    calls = []
    _same(Chunks(state, lambda: None, 1e-9, board).run("step 0", _recorded(calls), N, inputs=INPUTS))
    assert calls == []


class _Killed(Exception):
    pass


def test_the_owner_keeps_the_ranges_it_cannot_gather_yet_and_a_lost_board_gets_them_back(tmp_path, monkeypatch):
    from tfpurify.evaluation.report import load_state, save_state

    def stuck(seconds):  # the owner would wait for range 0:4 without keeping the others first
        raise AssertionError("waited for a held range without keeping the done ones")
    monkeypatch.setattr(chunks_mod.time, "sleep", stuck)
    lost = ChunkBoard(tmp_path / "lost")
    lost.attack("step 0", N, INPUTS).take(0, 4)  # held (by this process) while a helper does the rest
    with pytest.raises(NothingToHelpWith):
        _chunks(lost, helper=True).run("step 0", _recorded([]), N, inputs=INPUTS)
    state, saved = {}, []

    def killed_at_checkpoint():  # the owner is killed once it has kept its partial report
        saved.append(save_state(state))
        raise _Killed
    with pytest.raises(_Killed):
        Chunks(state, killed_at_checkpoint, 1e-9, lost).run("step 0", _recorded([]), N, inputs=INPUTS)
    kept, _ = load_state(saved[-1])
    assert sorted(kept["part"]["ahead"]) == [4, 8, 10] and kept["part"]["done"] == 0

    parts, calls = [], []  # resumed on a new machine: the board is empty
    resumed = Chunks(kept, lambda: parts.append(dict(kept["part"])), 1e-9, ChunkBoard(tmp_path / "new"))
    _same(resumed.run("step 0", _recorded(calls), N, inputs=INPUTS))
    assert calls == [(0, 4)]  # only the range that was in progress is attacked again
    assert parts and all(min(p["ahead"], default=p["done"]) >= p["done"] for p in parts)  # gathered: dropped


def test_a_kept_range_is_put_back_only_where_no_range_on_the_board_overlaps_it(tmp_path):
    board = ChunkBoard(tmp_path).attack("step 0", N, INPUTS)
    board.take(2, 4)  # held by a process that is running (this one)
    assert not board.restore(0, 4, [np.full(4, -1)]) and not (board.folder / "0-4.npz").exists()
    assert board.restore(6, 8, [np.arange(6, 8)]) and board.done_after(5) == {6: 8}
    np.testing.assert_array_equal(board.done_at(7)[0][0], [7])
