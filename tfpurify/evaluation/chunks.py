"""Attacks that a killed evaluation resumes inside: an attack on many images runs in chunks of them.

An attack on a latent-search defense can take hours (a gradient through 150 optimisation steps per
image); kept only when it finishes, it is lost whenever the process dies. `Chunks.run` runs it on a first
chunk of CHUNK_START images, sizes each next chunk by the time per image so far to take about `seconds`
(at least CHUNK_MIN images), and after every chunk keeps what is done in the report's progress state and
calls the evaluation's checkpoint. Images are attacked independently, so a chunk is the attack on its
images; only the random starts differ from one run over all of them (each chunk draws its own, from the
same seed).
"""

import json
import time

import numpy as np

__all__ = ["Chunks", "CHUNK_START", "CHUNK_MIN", "chunk_key"]

CHUNK_START, CHUNK_MIN = 4, 2


def chunk_key(label, **params):
    """A key naming an attack run: its label and its parameters (sorted, JSON)."""
    return f"{label} {json.dumps(params, sort_keys=True, default=str)}"


class Chunks:
    """Runs attacks in chunks, kept in `state` (a dict inside `report.progress_state`, saved with it).

    Args:
      state: where the unfinished attack (`state["part"]`) and the finished ones asked to be kept
        (`state["done"]`) live.
      checkpoint: None, or a callable with no arguments that saves the report (the evaluation's checkpoint).
      seconds: about how long a chunk takes; None (or no checkpoint): every attack runs at once.
    """

    def __init__(self, state, checkpoint=None, seconds=None):
        self.state, self.checkpoint, self.seconds = state, checkpoint, seconds

    @property
    def chunked(self):
        return self.checkpoint is not None and self.seconds is not None

    def run(self, key, attack, n, keep=False):
        """`attack(lo, hi)` -> a tuple of arrays over images lo:hi; returns the tuple over all `n` images.

        Resumes the kept part of the attack named `key` where one was kept; `keep`: the finished result is
        kept under `key` (until `forget`) and returned without attacking again, for a caller that is itself
        run again from its start when resumed (the sanity checks)."""
        done = self.state.setdefault("done", {})
        if key in done:
            return tuple(done[key])
        if not self.chunked or n <= CHUNK_START:
            result = tuple(attack(0, n))
        else:
            result = self._in_chunks(key, attack, n)
        if keep:
            done[key] = list(result)
        return result

    def _in_chunks(self, key, attack, n):
        part = self.state.get("part")
        if not (isinstance(part, dict) and part.get("key") == key and part.get("n") == n):
            part = {"key": key, "n": n, "done": 0, "size": CHUNK_START, "arrays": None}
        while part["done"] < n:
            lo = part["done"]
            hi = min(n, lo + part["size"])
            start = time.perf_counter()
            got = [np.asarray(a) for a in attack(lo, hi)]
            per_image = max(time.perf_counter() - start, 1e-9) / (hi - lo)
            arrays = part["arrays"]
            part["arrays"] = got if arrays is None else [np.concatenate([a, b]) for a, b in zip(arrays, got)]
            part["done"] = hi
            part["size"] = int(min(n, max(CHUNK_MIN, self.seconds / per_image)))
            if hi < n:
                self.state["part"] = part
                self.checkpoint()
        self.state.pop("part", None)
        return tuple(part["arrays"])

    def forget(self):
        """Drops the kept results (their caller finished; a part is dropped when its attack finishes)."""
        self.state.pop("done", None)
