"""Run folders on disk: config.json, weights, atomic writes and claims.

A run folder (`runs/<name>/`) holds `config.json` (with a `kind` key naming what it holds),
weights, `history.csv`, reports and pictures. Every write goes to a temporary sibling first and is
renamed into place, so a crash never leaves a half-written file under the final name. A claim file
says which process works on a piece of shared work (`claim`), so that several processes share it.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import socket
import tempfile

import tensorflow as tf

from tfpurify.errors import RunFolderError

__all__ = ["atomic_write_text", "save_weights_atomic", "write_config", "read_config", "start_run",
           "holds_config", "run_state", "run_callbacks", "finish_run", "read_run", "restore_weights", "weights_digest",
           "file_digest", "claim", "this_process", "still_running"]


def atomic_write_text(path, text):
    """Writes `text` (str, or bytes written as they are) to a temporary file beside `path`, then renames it
    into place."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _boot_id():
    try:
        return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def this_process():
    """{host, pid, boot}: what a claim records of the process that writes it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "boot": _boot_id()}


def still_running(holder):
    """Whether the process a `this_process()` record names still runs; a process on another host counts as
    running (it cannot be checked from here)."""
    return holder.get("host") != socket.gethostname() or _holder_alive(holder)


def _holder_alive(holder):
    """Whether the process that wrote a claim on this host still runs."""
    if holder.get("boot") != _boot_id():
        return False  # the machine restarted since: its pid names another process now
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, TypeError, ValueError):
        return False  # gone, or a claim that names no process
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def claim(path):
    """Claims the work `path` names for this process: yields None while this process holds the claim (the file
    `path`, removed on leaving, also on an error), or a line naming the other running process that holds it. A
    claim whose process is gone (killed, or the machine restarted) is taken over."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = this_process()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
                holder = holder if isinstance(holder, dict) else {}
            except (OSError, json.JSONDecodeError):  # released, or being written, this instant
                if not path.exists():
                    continue
                yield f"a process that is writing its claim {path}"
                return
            elsewhere = holder.get("host") != me["host"]  # a process there cannot be checked from here
            if elsewhere or _holder_alive(holder):
                yield (f"process {holder.get('pid')} on {holder.get('host')} (claim {path}"
                       + ("; delete it if that process is gone" if elsewhere else "") + ")")
                return
            path.unlink(missing_ok=True)  # its process is gone: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        try:
            yield None
        finally:
            path.unlink(missing_ok=True)
        return
    yield f"another process (claim {path} changes hands)"


def save_weights_atomic(model, path):
    """Saves a Keras model's weights beside `path` under a temporary name, then renames."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    model.save_weights(str(tmp))
    os.replace(tmp, path)


def write_config(run_dir, config_dict):
    """Writes `config.json` into a run folder atomically."""
    atomic_write_text(pathlib.Path(run_dir) / "config.json", json.dumps(config_dict, indent=2) + "\n")


def read_config(run_dir):
    """Reads a run folder's config.json.

    Raises:
      RunFolderError: the folder or its config.json is missing or unreadable.
    """
    run_dir = pathlib.Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a tfpurify run folder (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunFolderError(f"{path}: unreadable ({e})") from None
    if not isinstance(cfg, dict) or "kind" not in cfg:
        raise RunFolderError(f"{path}: not a tfpurify config (no 'kind')")
    return cfg


def start_run(out_dir, config_dict):
    """Creates a run folder and writes its config; refuses to resume a run of another config."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "config.json").is_file() and (out_dir / "backup").exists():
        if not holds_config(out_dir, config_dict):
            raise RunFolderError(f"{out_dir} holds an unfinished run with a different config; use another --out")
    write_config(out_dir, config_dict)
    return out_dir


def holds_config(out_dir, config_dict):
    """Whether the run folder's config.json is `config_dict` (as written: tuples are lists in JSON)."""
    return read_config(out_dir) == json.loads(json.dumps(config_dict))


def run_state(out_dir, weights_name):
    """"finished" (weights written, no resume backup), "unfinished" (a backup to resume from) or "new"."""
    out_dir = pathlib.Path(out_dir)
    if not (out_dir / "config.json").is_file():
        return "new"
    if (out_dir / "backup").exists():
        return "unfinished"
    return "finished" if (out_dir / weights_name).is_file() else "new"


def run_callbacks(out_dir):
    """BackupAndRestore (a killed run resumes from its last epoch) and a CSV history."""
    return [tf.keras.callbacks.BackupAndRestore(str(pathlib.Path(out_dir) / "backup")),
            tf.keras.callbacks.CSVLogger(str(pathlib.Path(out_dir) / "history.csv"), append=True)]


def finish_run(model, out_dir, weights_name):
    """Saves the final weights atomically and drops the resume backup."""
    save_weights_atomic(model, pathlib.Path(out_dir) / weights_name)
    shutil.rmtree(pathlib.Path(out_dir) / "backup", ignore_errors=True)


def read_run(run_dir, kind):
    """The config dict of a run folder holding a `kind` run, or RunFolderError."""
    cfg = read_config(run_dir)
    if cfg.get("kind") != kind:
        raise RunFolderError(f"{run_dir} holds a {cfg.get('kind')!r} run, not a {kind}")
    return cfg


def restore_weights(model, run_dir, weights_name):
    """Loads a finished run's weights into a freshly built model."""
    weights = pathlib.Path(run_dir) / weights_name
    if not weights.is_file():
        raise RunFolderError(f"{run_dir} has no trained weights (training unfinished?)")
    try:
        model.load_weights(str(weights))
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{weights}: cannot be loaded ({e})") from None
    return model


def file_digest(path):
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(run_dir, weights_name):
    """SHA-256 of a run's weights file: identifies exactly which trained model a report is about."""
    return file_digest(pathlib.Path(run_dir) / weights_name)
