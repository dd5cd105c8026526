"""Attacks that a killed evaluation resumes inside: an attack on many images runs in chunks of them.

An attack on a latent-search defense can take hours (a gradient through 150 optimisation steps per
image); kept only when it finishes, it is lost whenever the process dies. `Chunks.run` runs it on a first
chunk of CHUNK_START images, sizes each next chunk by the time per image so far to take about `seconds`
(at least CHUNK_MIN images), and after every chunk keeps what is done in the report's progress state and
calls the evaluation's checkpoint. Images are attacked independently, so a chunk is the attack on its
images; only the random starts differ from one run over all of them (each chunk draws its own, from the
same seed).

Several processes can share one attack's chunks (`ChunkBoard`): each takes the next range of images no one
holds, under a lock, and leaves its result on the board; the process that owns the evaluation gathers the
ranges in order (its partial report keeps them as before), a helper only adds ranges. A range is named by the
attack's key and a digest of its inputs, so that a helper whose evaluation reached other images than the
owner's never mixes its results in. The owner's partial report also keeps the done ranges it cannot gather yet
(one before them is still held), and puts them back on the board when it resumes: a board that is lost (a new
machine) loses only the ranges in progress.
"""

import contextlib
import fcntl
import hashlib
import io
import json
import pathlib
import time

import numpy as np

from tfpurify.runs import atomic_write_text, still_running, this_process

__all__ = ["Chunks", "ChunkBoard", "NothingToHelpWith", "CHUNK_START", "CHUNK_MIN", "chunk_key"]

CHUNK_START, CHUNK_MIN = 4, 2

# Seconds between two looks at a range another process holds.
POLL_SECONDS = 5.0


def chunk_key(label, **params):
    """A key naming an attack run: its label and its parameters (sorted, JSON)."""
    return f"{label} {json.dumps(params, sort_keys=True, default=str)}"


class NothingToHelpWith(Exception):
    """A helper's `Chunks.run` found every range of the attack done or held by another process."""


class ChunkBoard:
    """A folder that several processes share the chunks of an attack through.

    Per attack (its key, n and a digest of its inputs) a subfolder holds `ranges.json` (each range's lo, hi,
    holder and whether it is done), changed only under an exclusive lock, and each done range's arrays
    (`<lo>-<hi>.npz`, written atomically). A range whose holder is gone (killed) is free again.
    """

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)

    def attack(self, key, n, inputs):
        digest = hashlib.sha256(json.dumps([key, int(n)]).encode())
        for a in inputs:  # arrays, or text (an attack's name and parameters)
            if isinstance(a, str):
                digest.update(json.dumps(a).encode())
                continue
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(a.tobytes())
        return _BoardAttack(self.folder / digest.hexdigest()[:20], n)


class _BoardAttack:
    def __init__(self, folder, n):
        self.folder, self.n, self.me = folder, n, this_process()

    @contextlib.contextmanager
    def _ranges(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.folder / "ranges.json"
            ranges = json.loads(path.read_text()) if path.exists() else []
            ranges = [r for r in ranges if r["done"] or still_running(r["holder"])]
            yield ranges
            atomic_write_text(path, json.dumps(ranges))

    def _done(self):
        """The done ranges (read without the lock: a range is marked done only once its arrays are written)."""
        path = self.folder / "ranges.json"
        return [r for r in json.loads(path.read_text()) if r["done"]] if path.exists() else []

    def done_at(self, lo):
        """The arrays from image `lo` on of the done range that holds it, and that range's hi; or None."""
        for r in self._done():
            if r["lo"] <= lo < r["hi"]:
                return [a[lo - r["lo"]:] for a in self.arrays(r["lo"], r["hi"])], r["hi"]
        return None

    def take(self, lo, size):
        """Claims the first range of at most `size` images at or after `lo` that no one holds or finished:
        (lo, hi), or None where there is none."""
        with self._ranges() as ranges:
            start = lo
            for r in sorted(ranges, key=lambda r: r["lo"]):
                if r["hi"] <= start:
                    continue
                if r["lo"] > start:
                    break
                start = r["hi"]
            if start >= self.n:
                return None
            hi = min([self.n, start + size] + [r["lo"] for r in ranges if r["lo"] > start])
            ranges.append({"lo": start, "hi": hi, "holder": self.me, "done": False})
            return start, hi

    def done_after(self, lo):
        """{lo: hi} of the done ranges that start at or after image `lo`."""
        return {r["lo"]: r["hi"] for r in self._done() if r["lo"] >= lo}

    def arrays(self, lo, hi):
        """The arrays of the done range lo:hi."""
        with np.load(self.folder / f"{lo}-{hi}.npz") as f:
            return [f[f"a{i}"] for i in range(len(f.files))]

    def restore(self, lo, hi, arrays):
        """Puts a done range back (kept elsewhere) where no range on the board overlaps it; whether it did."""
        with self._ranges() as ranges:  # checked, written and added under one lock: no one takes it in between
            if any(r["lo"] < hi and lo < r["hi"] for r in ranges):
                return False
            self._write(lo, hi, arrays)
            ranges.append({"lo": lo, "hi": hi, "holder": self.me, "done": True})
        return True

    def _write(self, lo, hi, arrays):
        npz = io.BytesIO()
        np.savez(npz, **{f"a{i}": np.asarray(a) for i, a in enumerate(arrays)})
        atomic_write_text(self.folder / f"{lo}-{hi}.npz", npz.getvalue())

    def put(self, lo, hi, arrays):
        """Leaves the result of range lo:hi on the board and marks it done."""
        self._write(lo, hi, arrays)
        with self._ranges() as ranges:
            ranges[:] = [r for r in ranges if not (r["lo"] == lo and r["hi"] == hi)]
            ranges.append({"lo": lo, "hi": hi, "holder": self.me, "done": True})

    def release(self, lo, hi):
        """Gives up range lo:hi unfinished (its attack failed or was interrupted)."""
        with self._ranges() as ranges:
            ranges[:] = [r for r in ranges if r["done"] or not (r["lo"] == lo and r["hi"] == hi)]


class Chunks:
    """Runs attacks in chunks, kept in `state` (a dict inside `report.progress_state`, saved with it).

    Args:
      state: where the unfinished attack (`state["part"]`) and the finished ones asked to be kept
        (`state["done"]`) live.
      checkpoint: None, or a callable with no arguments that saves the report (the evaluation's checkpoint).
      seconds: about how long a chunk takes; None (or no checkpoint): every attack runs at once.
      board: None, or a `ChunkBoard` whose ranges other processes share (for an attack `run` is given the
        `inputs` of).
      helper: this process only adds ranges to the board: where none is left to take, `run` raises
        `NothingToHelpWith` instead of waiting for the others.
    """

    def __init__(self, state, checkpoint=None, seconds=None, board=None, helper=False):
        self.state, self.checkpoint, self.seconds, self.board, self.helper = state, checkpoint, seconds, board, helper

    @property
    def chunked(self):
        return self.checkpoint is not None and self.seconds is not None

    def run(self, key, attack, n, keep=False, inputs=None):
        """`attack(lo, hi)` -> a tuple of arrays over images lo:hi; returns the tuple over all `n` images.

        Resumes the kept part of the attack named `key` where one was kept; `keep`: the finished result is
        kept under `key` (until `forget`) and returned without attacking again, for a caller that is itself
        run again from its start when resumed (the sanity checks). `inputs`: the arrays the attack's result
        depends on (its images, labels, verdicts so far), which name it on the board."""
        done = self.state.setdefault("done", {})
        if key in done:
            return tuple(done[key])
        if not self.chunked or n <= CHUNK_START:
            result = tuple(attack(0, n))
        elif self.board is not None and inputs is not None:
            result = self._on_board(key, attack, n, self.board.attack(key, n, inputs))
        else:
            result = self._in_chunks(key, attack, n)
        if keep:
            done[key] = list(result)
        return result

    def _in_chunks(self, key, attack, n):
        part = self._part(key, n)
        while part["done"] < n:
            lo = part["done"]
            hi = min(n, lo + part["size"])
            self._gather(part, self._timed(part, attack, lo, hi, n), hi, n)
        self.state.pop("part", None)
        return tuple(part["arrays"])

    def _timed(self, part, attack, lo, hi, n):
        """The attack on images lo:hi; sizes the part's next chunk by the time per image it took."""
        start = time.perf_counter()
        got = [np.asarray(a) for a in attack(lo, hi)]
        per_image = max(time.perf_counter() - start, 1e-9) / (hi - lo)
        part["size"] = int(min(n, max(CHUNK_MIN, self.seconds / per_image)))
        return got

    def _gather(self, part, got, hi, n):
        """Adds the arrays of the images up to `hi` to the part, and keeps it where more are to come."""
        arrays = part["arrays"]
        part["arrays"] = got if arrays is None else [np.concatenate([a, b]) for a, b in zip(arrays, got)]
        part["done"] = hi
        if part.get("ahead"):  # kept until gathered
            part["ahead"] = {lo: kept for lo, kept in part["ahead"].items() if lo >= hi}
        if hi < n:
            self.state["part"] = part
            self.checkpoint()

    def _on_board(self, key, attack, n, board):
        part = self._part(key, n)
        for lo, (hi, arrays) in sorted(part.get("ahead", {}).items()):
            board.restore(lo, hi, arrays)
        while part["done"] < n:
            lo = part["done"]
            found = board.done_at(lo)
            if found is None:
                self._keep_ahead(part, board)
                took = board.take(lo, part["size"])
                if took is None:  # the rest is held by other processes
                    if self.helper:
                        raise NothingToHelpWith(key)
                    time.sleep(POLL_SECONDS)
                    continue
                a, b = took
                try:
                    got = self._timed(part, attack, a, b, n)
                except BaseException:
                    board.release(a, b)
                    raise
                board.put(a, b, got)
                continue  # gathered in order from the board
            self._gather(part, *found, n)
        self.state.pop("part", None)
        return tuple(part["arrays"])

    def _keep_ahead(self, part, board):
        """The owner keeps (in its part, saved at a checkpoint) the done ranges on the board after the images it
        has gathered, so that they outlive the board (`_gather` drops each once gathered)."""
        if self.helper:
            return
        ahead = part.setdefault("ahead", {})
        new = {lo: hi for lo, hi in board.done_after(part["done"]).items() if lo not in ahead}
        if new:
            ahead.update({lo: (hi, board.arrays(lo, hi)) for lo, hi in new.items()})
            self.state["part"] = part
            self.checkpoint()

    def _part(self, key, n):
        part = self.state.get("part")
        if not (isinstance(part, dict) and part.get("key") == key and part.get("n") == n):
            part = {"key": key, "n": n, "done": 0, "size": CHUNK_START, "arrays": None}
        return part

    def forget(self):
        """Drops the kept results (their caller finished; a part is dropped when its attack finishes)."""
        self.state.pop("done", None)
