"""The pretrained zoo: trained runs with a manifest that anyone can re-verify in one command.

A zoo is a folder (the project's `zoo/` by default, `TFPURIFY_ZOO` or `--zoo` otherwise) of entries:

    zoo/<entry>/manifest.json        what the entry is, how it was trained, its numbers, its files' SHA-256
    zoo/<entry>/run/                 the defense's run folder (config.json, weights, calibration)
    zoo/classifiers/<name>/          a classifier run, stored once and shared by the entries that protect it

`zoo:<entry>` stands for the entry's runs wherever the CLI takes a run (`tfpurify eval zoo:cowboy`,
`tfpurify export zoo:cowboy`): its files are checked against the manifest first. Weights are stored
without the optimizer's state. `verify` is RobustBench's own check: the hashes, then the clean accuracy
on the manifest's test images within one point of the manifest's. `add` makes an entry from run folders
(copied; a shared classifier must match the stored one as it would be stored).
"""

import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import tempfile
from importlib import metadata

import numpy as np

from tfpurify import data
from tfpurify.classifiers import accuracy
from tfpurify.errors import InputValidationError, RunFolderError
from tfpurify.evaluation.report import jsonable
from tfpurify.runs import atomic_write_text, file_digest
from tfpurify.training import load_defended

__all__ = ["PREFIX", "MANIFEST", "zoo_dir", "is_reference", "entries", "read_manifest", "check_files", "resolve",
           "verify", "add", "record_leaderboard", "VerifyResult"]

PREFIX = "zoo:"
MANIFEST = "manifest.json"
RESERVED = {"name", "defense", "classifier", "dataset", "config", "runs", "runtime", "clean_accuracy",
            "weights_dtype", "tfpurify_version", "created", "files"}  # what `add` measures or records itself
RUN_FILES = ("config.json", "defense.weights.h5", "classifier.weights.h5", "calibration.json", "history.csv",
             "timing.json")


def zoo_dir(path=None):
    """The zoo folder: `path`, else $TFPURIFY_ZOO, else the project's `zoo/`."""
    if path is not None:
        return pathlib.Path(path)
    if os.environ.get("TFPURIFY_ZOO"):
        return pathlib.Path(os.environ["TFPURIFY_ZOO"])
    return pathlib.Path(__file__).resolve().parents[1] / "zoo"


def is_reference(run):
    """True for `zoo:<entry>`."""
    return isinstance(run, str) and run.startswith(PREFIX)


def entries(root=None):
    """Every entry's manifest, sorted by name."""
    root = zoo_dir(root)
    if not root.is_dir():
        return []
    return [read_manifest(p.parent.name, root) for p in sorted(root.glob(f"*/{MANIFEST}"))]


def deviation_summary(deviation):
    """A manifest's `deviation` (where an entry departs from its paper) up to its first semicolon: what the entry
    changed, without the measurement that follows."""
    return str(deviation).split(";")[0].strip()


def read_manifest(name, root=None):
    root = zoo_dir(root)
    path = root / name / MANIFEST
    if not path.is_file():
        known = ", ".join(m.parent.name for m in sorted(root.glob(f"*/{MANIFEST}"))) or "none"
        raise RunFolderError(f"no zoo entry {name!r} in {root} (entries: {known})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: unreadable ({e})") from None


def check_files(name, root=None):
    """{relative path: (expected SHA-256, found SHA-256 or None if missing)} for every file that differs."""
    root = zoo_dir(root)
    manifest = read_manifest(name, root)
    wrong = {}
    for relative, expected in manifest["files"].items():
        path = root / relative
        found = file_digest(path) if path.is_file() else None
        if found != expected:
            wrong[relative] = (expected, found)
    return wrong


def _require_intact(name, root):
    wrong = check_files(name, root)
    if wrong:
        first, (expected, found) = next(iter(wrong.items()))
        state = "missing" if found is None else f"SHA-256 {found[:12]}..., the manifest says {expected[:12]}..."
        raise RunFolderError(f"zoo entry {name!r}: {len(wrong)} file(s) do not match the manifest ({first}: {state})")


def resolve(reference, classifier_run=None, overrides=None, root=None):
    """`zoo:<entry>` -> (run folder, classifier run folder, runtime overrides) after checking the files.

    An explicit `classifier_run` is refused (the entry names its own); `overrides` win over the entry's.
    """
    name = reference[len(PREFIX):] if is_reference(reference) else reference
    root = zoo_dir(root)
    manifest = read_manifest(name, root)
    if classifier_run is not None:
        raise InputValidationError(f"zoo:{name} names its own classifier; leave out --classifier")
    _require_intact(name, root)
    runs = manifest["runs"]
    classifier = str(root / runs["classifier"]) if runs.get("classifier") else None
    return str(root / runs["run"]), classifier, {**manifest.get("runtime", {}), **(overrides or {})}


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    name: str
    files: int
    n: int
    clean_accuracy: float
    expected: float
    tolerance: float

    @property
    def passed(self):
        return abs(self.clean_accuracy - self.expected) <= self.tolerance + 1e-9


def _clean_accuracy(run, classifier, overrides, dataset, n, batch_size=100):
    defended, _ = load_defended(run, classifier, overrides)
    x, y = data.load_dataset(dataset, "test", limit=n)
    return accuracy(defended, x, y, batch_size=batch_size), len(x)


def verify(name, root=None, tolerance=0.01):
    """The entry's files against their SHA-256 (RunFolderError if one differs), then its clean accuracy on the
    test images the manifest states it on, against the manifest's, within `tolerance` (one point)."""
    root = zoo_dir(root)
    manifest = read_manifest(name, root)
    run, classifier, overrides = resolve(name, root=root)  # the hashes first
    measured, used = _clean_accuracy(run, classifier, overrides, manifest["dataset"], manifest["clean_accuracy"]["n"])
    clean = manifest["clean_accuracy"]
    return VerifyResult(name, len(manifest["files"]), used, measured, clean["accuracy"], tolerance)


def record_leaderboard(name, row, root=None):
    """Writes the entry's leaderboard row into its manifest (its `leaderboard` field; `n` there is the n the
    leaderboard measures the entry on from then on). The weights' hashes are untouched."""
    root = zoo_dir(root)
    manifest = read_manifest(name, root)
    manifest["leaderboard"] = jsonable(row)
    atomic_write_text(root / name / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _copy_run(source, target, half=False):
    """The run's files that loading needs (and its history), copied into `target`; returns their paths."""
    source = pathlib.Path(source)
    if not (source / "config.json").is_file():
        raise RunFolderError(f"{source} is not a run folder (no config.json)")
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for file in RUN_FILES:
        if (source / file).is_file():
            if file.endswith(".weights.h5"):
                _copy_without_optimizer(source / file, target / file, half)
            else:
                shutil.copyfile(source / file, target / file)
            copied.append(target / file)
    return copied


def _copy_without_optimizer(source, target, half=False):
    """A Keras `.weights.h5` without its optimizers' state (training's, not the model's: the cnn's file is a
    third of the run's; a GAN's `d_optimizer`, `g_optimizer`, ... are two thirds of FBGAN's), float32 arrays
    stored as float16 with `half` (Keras casts them back when loading), written to a temporary sibling and
    renamed. `add` measures the entry on what is stored, so a state the model needs cannot go missing unseen."""
    import h5py

    partial = target.with_name(target.name + ".partial")
    with h5py.File(source, "r") as original, h5py.File(partial, "w") as copy:
        copy.attrs.update(original.attrs)

        def copy_item(name, item):
            if isinstance(item, h5py.Dataset):
                value = item[()]
                if half and isinstance(value, np.ndarray) and value.dtype == np.float32:
                    value = value.astype(np.float16)
                copy.create_dataset(name, data=value).attrs.update(item.attrs)
            else:
                copy.require_group(name).attrs.update(item.attrs)

        for key in original:
            if key == "optimizer" or key.endswith("_optimizer"):  # a GAN's players each have their own
                continue
            copy_item(key, original[key])
            if isinstance(original[key], h5py.Group):
                original[key].visititems(lambda name, item, top=key: copy_item(f"{top}/{name}", item))
    partial.replace(target)


def _store_classifier(classifier_run, classifier_name, root, half=False):
    """A classifier run under classifiers/<name>, stored once: one stored there already must be identical.
    Returns (its files, its path relative to the zoo)."""
    shared = root / "classifiers" / (classifier_name or pathlib.Path(classifier_run).name)
    if not shared.exists():
        return _copy_run(classifier_run, shared, half), str(shared.relative_to(root))
    with tempfile.TemporaryDirectory() as folder:  # compared as it would be stored
        _copy_run(classifier_run, pathlib.Path(folder), half)
        for file in RUN_FILES:
            mine, stored = pathlib.Path(folder) / file, shared / file
            if mine.is_file() != stored.is_file() or (mine.is_file() and file_digest(mine) != file_digest(stored)):
                raise RunFolderError(f"{shared} holds another classifier ({file} differs); "
                                     "give --classifier-name a new name")
    return [shared / f for f in RUN_FILES if (shared / f).is_file()], str(shared.relative_to(root))


def _store_run(run, name, root, half=False):
    """A defense run under <name>/run, unless another entry stores the same files (one run served two ways, as
    Cowboy and its Defense-GAN mode): then that entry's copy is shared. Returns (its files, its path relative to
    the zoo)."""
    with tempfile.TemporaryDirectory() as folder:  # compared as it would be stored
        mine = {p.name: file_digest(p) for p in _copy_run(run, pathlib.Path(folder), half)}
    for manifest in entries(root):
        stored = manifest["runs"]["run"]
        if manifest["name"] != name and {f: d for f, d in manifest["files"].items()
                                         if f.startswith(stored + "/")} == {f"{stored}/{f}": d for f, d in mine.items()}:
            return [root / stored / f for f in mine], stored
    return _copy_run(run, root / name / "run", half), f"{name}/run"


def add(name, run, classifier_run=None, classifier_name=None, root=None, overrides=None, n=200, details=None,
        half=False):
    """Makes zoo entry `name` from run folders: copies them, measures the clean accuracy on the first `n` test
    images, writes the manifest with every file's SHA-256. Classifiers (the one a defense protects, or the
    entry's run itself when it is a bare classifier) are stored once under classifiers/<classifier_name>
    (default: the run folder's name). `half`: weights stored as float16 (half the size; the manifest's clean
    accuracy is measured on what is stored). A defense run that another entry stores already (the same files as
    stored) is shared with it, not copied again."""
    root = zoo_dir(root)
    reserved = sorted(set(details or {}) & RESERVED)
    if reserved:
        raise InputValidationError(f"the manifest's own fields cannot be given as details: {', '.join(reserved)}")
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name in ("classifiers", ".", ".."):
        raise InputValidationError(f"zoo entry name {name!r}: letters, digits, '-', '_' and '.' only")
    entry = root / name
    if (entry / MANIFEST).exists():
        raise RunFolderError(f"zoo entry {name!r} exists in {root}; remove its folder to replace it")
    defended, info = load_defended(run, classifier_run, overrides)  # refuses what would not load, before any copy
    if getattr(defended.purifier, "stochastic", False):
        raise InputValidationError(f"{run} cleans with fresh random draws: an entry's numbers must be re-verifiable; "
                                   "fix them with its runtime option (Cowboy: --cleaning-seed N)")
    if info["defense"] == "none":  # a bare classifier: the shared copy is the entry's run
        files, run_path = _store_classifier(run, classifier_name, root, half)
        runs = {"run": run_path}
    else:
        files, run_path = _store_run(run, name, root, half)
        runs = {"run": run_path}
        if classifier_run is not None:
            classifier_files, runs["classifier"] = _store_classifier(classifier_run, classifier_name, root, half)
            files += classifier_files
    classifier = str(root / runs["classifier"]) if "classifier" in runs else None
    clean, used = _clean_accuracy(str(root / runs["run"]), classifier, overrides, info["dataset"], n)  # as stored
    manifest = {"name": name, "defense": info["defense"], "classifier": info["classifier"],
                "dataset": info["dataset"], "config": info["config"], "runs": runs,
                "runtime": info["runs"].get("defense", {}).get("runtime", {}),
                "clean_accuracy": {"n": used, "accuracy": float(clean)},
                "weights_dtype": "float16" if half else "float32",
                "tfpurify_version": metadata.version("tfpurify"),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **(details or {}),
                "files": {str(p.relative_to(root)): file_digest(p) for p in files}}
    entry.mkdir(parents=True, exist_ok=True)
    atomic_write_text(entry / MANIFEST, json.dumps(jsonable(manifest), indent=2) + "\n")
    return manifest
