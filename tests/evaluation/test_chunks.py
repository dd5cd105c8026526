"""Attacks in chunks (`tfpurify.evaluation.chunks`): sized by time, kept, resumed, remembered."""

import numpy as np

from tfpurify.evaluation import chunks as chunks_mod
from tfpurify.evaluation.chunks import CHUNK_MIN, CHUNK_START, Chunks


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
