"""export.py on toy models that export in a fraction of a second: what is served, what is refused, what is
written, and the atomic swap, down to the arguments of `renameat2`. Fast enough for `make mutation`
(tests/test_export.py exports real defenses and reloads them in fresh processes).

Exports are served here as TF Serving loads them, by the TF1 SavedModel loader in a session with its own
threads: `make mutation` runs each mutant in a fork of a warm process, where TensorFlow's global thread
pools are gone and any graph function (a `tf.saved_model.load`ed signature too) would wait forever.
What the signatures compute is checked eagerly, on the functions the export is made of."""

import ctypes
import errno
import functools
import importlib.metadata
import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from tests.toys import BrightnessDetector, RoundingPurifier
from tfpurify import export
from tfpurify.data import load_dataset
from tfpurify.defenses import DefendedClassifier
from tfpurify.errors import InputValidationError, RunFolderError

SHAPE = (28, 28, 1)


def _toy_classifier(name="toy_cnn"):
    """A seeded convolution (which, like the real classifiers', refuses an empty batch on oneDNN) and a dense layer."""
    init = tf.keras.initializers.GlorotUniform
    return tf.keras.Sequential([
        tf.keras.layers.Conv2D(2, 3, padding="same", kernel_initializer=init(0)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, kernel_initializer=init(1),
                              bias_initializer=tf.keras.initializers.RandomNormal(0, 1, 2)),
    ], name=name)


def _defended(purifier=None, detector=None, threshold=None):
    if detector is not None and threshold is not None:
        detector.threshold.assign(threshold)
    defended = DefendedClassifier(_toy_classifier(), purifier=purifier, detector=detector)
    defended(tf.zeros((1, *SHAPE)))
    return defended


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion_mnist", "test", limit=6)[0]


@pytest.fixture(scope="module")
def toy_exports(tmp_path_factory, images):
    """A rounding purifier and a brightness detector (flags about half of `images`), exported once."""
    base = tmp_path_factory.mktemp("toy_exports")
    detector = BrightnessDetector()
    threshold = float(np.median(detector.adversarial_score(images)))
    models = {"rounding": _defended(purifier=RoundingPurifier(levels=2)),
              "detector": _defended(purifier=detector, detector=detector, threshold=threshold)}
    paths = {name: export.export_saved_model(m, base, name, 1, SHAPE, metadata={"dataset": "fashion_mnist"})
             for name, m in models.items()}
    return models, paths


class _Served:
    """An export loaded by the TF1 SavedModel loader (as TF Serving loads it) into a session with its own
    threads; `signatures[name](images=...)` gives {output: numpy array}, as `tf.saved_model.load` would give
    tensors. Failed requests raise what the graph raises (tf.errors.InvalidArgumentError)."""

    def __init__(self, path):
        self.graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(use_per_session_threads=True, inter_op_parallelism_threads=1,
                                          intra_op_parallelism_threads=1)
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default():
            self.meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        self.signatures = {name: functools.partial(self._run, name) for name in self.meta.signature_def
                           if not name.startswith("__")}  # not the loader's own init op

    def _run(self, name, images):
        signature = self.meta.signature_def[name]
        fetches = {key: value.name for key, value in signature.outputs.items()}
        return self.session.run(fetches, {signature.inputs["images"].name: np.asarray(images, np.float32)})


@pytest.fixture(scope="module")
def served(toy_exports):
    return {name: _Served(path) for name, path in toy_exports[1].items()}


@pytest.mark.parametrize("name", ["rounding", "detector"])
def test_both_signatures_serve_what_the_model_computes(toy_exports, served, images, name):
    models, _ = toy_exports
    defended, model = models[name], served[name]
    assert set(model.signatures) == {"serving_default", "purify"}
    for signature in map(model.meta.signature_def.get, model.signatures):
        spec = signature.inputs["images"]
        assert spec.dtype == tf.float32.as_datatype_enum
        assert [d.size for d in spec.tensor_shape.dim] == [-1, *SHAPE]
    for batch in (images[:1], images):
        out = model.signatures["serving_default"](images=batch)
        expected = {k: np.asarray(v) for k, v in defended.predict_outputs(batch).items()}
        assert set(out) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(out[key], value, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(model.signatures["purify"](images=batch)["purified"], defended.purify(batch),
                                   atol=1e-6)
    if name == "rounding":
        assert set(out) == {"probabilities", "classes"}
        assert set(np.unique(model.signatures["purify"](images=images)["purified"])) <= {0.0, 0.5, 1.0}
    else:
        assert set(out) == {"probabilities", "classes", "adversarial_score", "is_adversarial"}
        assert 0 < out["is_adversarial"].sum() < len(images)  # flags some, not all


@pytest.mark.parametrize("name", ["rounding", "detector"])
def test_the_served_graph_refuses_nan_and_inf_clips_and_serves_an_empty_batch(served, images, name):
    for fn in served[name].signatures.values():
        for bad in (np.nan, np.inf, -np.inf):
            x = images[:3].copy()
            x[1, 5, 5, 0] = bad
            with pytest.raises(tf.errors.InvalidArgumentError, match="images contain NaN or Inf"):
                fn(images=x)
        out_of_range = images[:2] * 3.0 - 1.0  # below 0 and above 1
        clipped = fn(images=np.clip(out_of_range, 0.0, 1.0))
        for key, value in fn(images=out_of_range).items():
            np.testing.assert_allclose(value, clipped[key], atol=1e-6, err_msg=key)
        empty = fn(images=np.zeros((0, *SHAPE)))
        assert empty and all(v.shape[0] == 0 for v in empty.values()), empty


@pytest.mark.parametrize("name", ["rounding", "detector"])
def test_the_endpoints_check_shape_and_values_clip_and_serve_an_empty_batch(toy_exports, images, name):
    """The functions the signatures are traced from, run eagerly (a wrong shape is refused by the TF1
    loader's own feed check before the graph sees it, so the graph's shape check is tested here)."""
    defended = toy_exports[0][name]
    endpoints = export._endpoints(defended, SHAPE)
    assert list(endpoints) == ["serving_default", "purify"]
    expected = {"serving_default": {k: np.asarray(v) for k, v in defended.predict_outputs(images).items()},
                "purify": {"purified": np.asarray(defended.purify(images))}}
    with pytest.raises(Exception):  # what _any_batch is there for: the convolution refuses an empty batch
        _toy_classifier()(tf.zeros((0, *SHAPE)))
    for signature, fn in endpoints.items():
        out = fn(tf.constant(images))
        assert set(out) == set(expected[signature])
        for key, value in expected[signature].items():
            np.testing.assert_allclose(out[key], value, atol=1e-6, err_msg=key)
        for bad in (np.nan, np.inf, -np.inf):
            x = images[:3].copy()
            x[1, 5, 5, 0] = bad
            with pytest.raises(tf.errors.InvalidArgumentError, match="images contain NaN or Inf"):
                fn(tf.constant(x))
        for shape in ((2, 28, 28, 3), (2, 27, 28, 1), (2, 28, 29, 1)):
            with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must have shape \[N, 28, 28, 1\]"):
                fn(tf.zeros(shape))
        out_of_range = images[:2] * 3.0 - 1.0
        clipped = fn(tf.constant(np.clip(out_of_range, 0.0, 1.0)))
        for key, value in fn(tf.constant(out_of_range)).items():
            np.testing.assert_allclose(value, clipped[key], atol=1e-6, err_msg=key)
        empty = fn(tf.zeros((0, *SHAPE)))
        assert set(empty) == set(expected[signature])
        for key, value in empty.items():
            assert value.shape == (0, *expected[signature][key].shape[1:]), (key, value.shape)
    np.testing.assert_allclose(endpoints["purify"](tf.constant(images[:2] * 3.0 - 1.0))["purified"],
                               defended.purify(np.clip(images[:2] * 3.0 - 1.0, 0.0, 1.0)), atol=1e-6)


def test_metadata_written_beside_the_model(toy_exports):
    _, paths = toy_exports
    for name, path in paths.items():
        meta = json.loads((path / "assets" / export.METADATA_ASSET).read_text())
        assert meta["dataset"] == "fashion_mnist"
        assert meta["input_shape"] == [28, 28, 1] and meta["signatures"] == ["serving_default", "purify"]
        assert meta["defense"] == {"rounding": "RoundingPurifier", "detector": "BrightnessDetector"}[name]
        assert meta["classifier"] == "toy_cnn"
        assert meta["versions"] == {"tfpurify": importlib.metadata.version("tfpurify"), "tensorflow": tf.__version__}
        assert sorted(p.name for p in path.parent.iterdir()) == ["1"]  # no temporary folder left


def test_export_places_the_version_and_refuses_what_it_cannot_write(tmp_path, images):
    defended = _defended()
    base = tmp_path / "deep" / "er"  # created as needed
    path = export.export_saved_model(defended, base, "m", 1, SHAPE, metadata={"where": tmp_path})
    assert path == base / "m" / "1" and (path / "saved_model.pb").is_file()
    assert json.loads((path / "assets" / export.METADATA_ASSET).read_text())["where"] == str(tmp_path)  # default=str
    with pytest.raises(export.ExportError, match=r"m/1 exists; pass --overwrite to replace it"):
        export.export_saved_model(defended, base, "m", 1, SHAPE)
    assert export.export_saved_model(defended, base, "m", 7, SHAPE) == base / "m" / "7"
    for version in (0, -1, True, 1.0, "2", None):
        with pytest.raises(InputValidationError, match="version must be a positive integer"):
            export.export_saved_model(defended, base, "m", version, SHAPE)
    assert sorted(p.name for p in (base / "m").iterdir()) == ["1", "7"]


def test_overwrite_swaps_in_the_new_version(tmp_path, images):
    first = _defended(purifier=RoundingPurifier(levels=2))
    second = _defended(purifier=RoundingPurifier(levels=2))
    second.classifier.layers[-1].bias.assign(second.classifier.layers[-1].bias + 100 * np.eye(10)[3])  # class 3
    export.export_saved_model(first, tmp_path, "m", 1, SHAPE, metadata={"v": 1})
    path = export.export_saved_model(second, tmp_path, "m", 1, SHAPE, metadata={"v": 2}, overwrite=True)
    assert (_Served(path).signatures["serving_default"](images=images)["classes"] == 3).all()
    assert json.loads((path / "assets" / export.METADATA_ASSET).read_text())["v"] == 2
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_names_one_path_component(tmp_path):
    for good in ("a", "Model_1.0-b", "9", "x" * export.MAX_NAME_LENGTH):
        assert export.validate_name(good) == good
    for bad in ("x" * (export.MAX_NAME_LENGTH + 1), "a..b", "..", ".a", "-a", "_a", "a/b", "a b", "", None, 3):
        with pytest.raises(InputValidationError, match=r"invalid model name .*up to 100 letters"):
            export.validate_name(bad)
    with pytest.raises(InputValidationError, match="invalid model name"):
        export.export_saved_model(_defended(), tmp_path, "a/b", 1, SHAPE)
    assert not any(tmp_path.iterdir())


def test_reserved_metadata_may_be_repeated_not_changed(tmp_path):
    defended = _defended()
    own = export._own_metadata(defended, SHAPE)
    assert set(own) == set(export.RESERVED_METADATA)
    with pytest.raises(InputValidationError) as refused:
        export.export_saved_model(defended, tmp_path, "m", 1, SHAPE,
                                  metadata={"defense": "forged", "classifier": "forged", "input_shape": [28, 28, 1]})
    assert str(refused.value) == ("metadata may not set classifier, defense: tfpurify writes these keys itself "
                                  "(classifier='toy_cnn', defense='none')")
    path = export.export_saved_model(defended, tmp_path, "m", 1, SHAPE, metadata={**own, "extra": 1})
    meta = json.loads((path / "assets" / export.METADATA_ASSET).read_text())
    assert meta["extra"] == 1 and meta["defense"] == "none"


def test_own_metadata_names_the_defense_and_the_classifier(monkeypatch):
    def named(registry_name=None, **attrs):
        obj = types.SimpleNamespace(**attrs)
        if registry_name:
            obj.registry_name = registry_name
        return obj

    def defended(classifier, purifier=None, detector=None, robust=False):
        return types.SimpleNamespace(classifier=classifier, purifier=purifier, detector=detector,
                                     robust_classifier=robust)

    def own(d):
        return export._own_metadata(d, (2, 3, 1))

    clf = named(arch="cnn", name="keras_name")
    assert own(defended(clf))["defense"] == "none" and own(defended(clf))["classifier"] == "cnn"
    assert own(defended(clf, purifier=named("dae"), detector=named("other")))["defense"] == "dae"
    assert own(defended(clf, detector=named("cowboy")))["defense"] == "cowboy"
    assert own(defended(clf, purifier=types.SimpleNamespace()))["defense"] == "SimpleNamespace"
    assert own(defended(named("pgd_at", arch="cnn"), robust=True))["defense"] == "pgd_at"
    duck = types.SimpleNamespace(classifier=named("pgd_at", arch="cnn"), purifier=named("dae"), detector=None)
    assert own(duck)["defense"] == "dae"  # without `robust_classifier`: not adversarial training
    assert own(defended(named(name="keras_name")))["classifier"] == "keras_name"
    assert own(defended(named(arch=None, name="keras_name")))["classifier"] == "keras_name"
    assert own(defended(types.SimpleNamespace()))["classifier"] == "SimpleNamespace"
    mine = own(defended(clf))
    assert mine["input_shape"] == [2, 3, 1] and mine["signatures"] == ["serving_default", "purify"]
    assert mine["versions"] == {"tfpurify": importlib.metadata.version("tfpurify"), "tensorflow": tf.__version__}

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert own(defended(clf))["versions"]["tfpurify"] == "unknown"


def test_an_uncalibrated_detector_is_refused_a_calibrated_one_exported(tmp_path):
    detector = BrightnessDetector()
    with pytest.raises(export.ExportError, match="never calibrated"):
        export.export_saved_model(_defended(purifier=detector, detector=detector), tmp_path, "m", 1, SHAPE)
    assert not (tmp_path / "m").exists()
    export.export_saved_model(_defended(purifier=detector, detector=detector, threshold=0.5), tmp_path, "m", 1, SHAPE)


@pytest.mark.parametrize("interactive", [True, False])
def test_export_leaves_keras_logging_as_it_found_it(tmp_path, interactive):
    (tf.keras.utils.enable_interactive_logging if interactive else tf.keras.utils.disable_interactive_logging)()
    try:
        export.export_saved_model(_defended(), tmp_path, "m", 1, SHAPE)
        assert tf.keras.utils.is_interactive_logging_enabled() == interactive
    finally:
        tf.keras.utils.enable_interactive_logging()


def test_the_temporary_folder_goes_when_writing_fails(tmp_path, monkeypatch):
    def crash(self, filepath, options=None):
        os.makedirs(filepath)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tf.keras.export.ExportArchive, "write_out", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_saved_model(_defended(), tmp_path, "m", 2, SHAPE)
    assert list((tmp_path / "m").iterdir()) == []


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "f").write_text("new"), (b / "f").write_text("old")
    export._exchange(a, b)
    assert (b / "f").read_text() == "new" and (a / "f").read_text() == "old"


class _FakeLibc:
    def __init__(self, result):
        self.result, self.calls = result, []

    def renameat2(self, *args):
        self.calls.append(args)
        return self.result


def test_exchange_calls_renameat2_with_rename_exchange(tmp_path, monkeypatch):
    libc = _FakeLibc(0)
    monkeypatch.setattr(ctypes, "CDLL", lambda name, use_errno=False: libc if name is None and use_errno else None)
    export._exchange(tmp_path / "a", tmp_path / "b")
    assert libc.calls == [(-100, os.fsencode(tmp_path / "a"), -100, os.fsencode(tmp_path / "b"), 2)]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EACCES, errno.ENOENT])
def test_exchange_without_an_atomic_swap_is_an_export_error_other_failures_are_os_errors(tmp_path, monkeypatch,
                                                                                          code):
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: _FakeLibc(-1))
    monkeypatch.setattr(ctypes, "get_errno", lambda: code)
    if code in (errno.EACCES, errno.ENOENT):
        with pytest.raises(OSError) as failed:
            export._exchange(tmp_path / "a", tmp_path / "b")
        assert not isinstance(failed.value, export.ExportError)
        assert failed.value.errno == code and failed.value.filename == str(tmp_path / "b")
        assert failed.value.strerror == os.strerror(code)
    else:
        with pytest.raises(export.ExportError, match=r"cannot replace .*/b atomically"):
            export._exchange(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("libc", ["no renameat2", "no C library"])
def test_exchange_on_a_platform_without_renameat2(tmp_path, monkeypatch, libc):
    def cdll(*args, **kwargs):
        if libc == "no C library":
            raise OSError("no libc")
        return object()

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    with pytest.raises(export.ExportError, match="export a new version instead"):
        export._exchange(tmp_path / "a", tmp_path / "b")


def test_predict_request_is_tf_serving_row_format():
    x = np.arange(8, dtype=np.float64).reshape(2, 2, 2, 1) / 10  # not exact in float32: sent as float32
    body = json.loads(export.predict_request(x))
    assert body == {"signature_name": "serving_default", "instances": x.astype(np.float32).tolist()}
    assert body["instances"][0][0][1][0] == float(np.float32(0.1)) != 0.1
    assert json.loads(export.predict_request(x[:1], "purify"))["signature_name"] == "purify"


def test_evaluation_summary_only_for_the_weights_and_options_it_was_made_for(tmp_path):
    assert export.evaluation_summary(tmp_path, {}) == (None, None)  # no report
    runs = {"classifier": {"path": "a", "weights_sha256": "1" * 64},
            "defense": {"path": "b", "weights_sha256": "2" * 64, "runtime": {"clean_steps": 5}},
            "undefended": {"path": "c", "weights_sha256": "3" * 64}}
    rows = [{"attack": "pgd", "accuracy": 0.5}]
    report = tmp_path / "report.json"

    def summary(recorded, given=runs):
        report.write_text(json.dumps({"rows": rows, "settings": {"runs": recorded}}))
        return export.evaluation_summary(tmp_path, given)

    assert summary(runs) == (rows, None)
    other_undefended = {**runs, "undefended": {"path": "c", "weights_sha256": "4" * 64}}
    assert summary(other_undefended) == (rows, None)  # an export leaves the undefended classifier out
    assert summary({k: v for k, v in runs.items() if k != "undefended"}) == (rows, None)
    moved = {**runs, "classifier": {"path": "elsewhere", "weights_sha256": "1" * 64}}
    assert summary(moved) == (rows, None)  # the same weights in another folder
    for recorded in ({**runs, "classifier": {"path": "a", "weights_sha256": "5" * 64}},
                     {**runs, "defense": {**runs["defense"], "runtime": {"clean_steps": 6}}},
                     {**runs, "defense": {**runs["defense"], "runtime": None}},
                     {k: v for k, v in runs.items() if k != "defense"}, None, []):
        got, note = summary(recorded)
        assert got is None and note.startswith(f"note: {report} was not made for these weights"), recorded
    reordered = {**runs, "defense": {**runs["defense"], "runtime": {"b": 1, "a": 2}}}
    assert summary(reordered, {**runs, "defense": {**runs["defense"], "runtime": {"a": 2, "b": 1}}}) == (rows, None)
    got, note = summary({**runs, "classifier": "not a record"})  # a foreign report: a note, not a crash
    assert got is None and "not made for these weights" in note
    runtime_unset = {**runs, "defense": {"path": "b", "weights_sha256": "2" * 64}}
    assert summary({**runtime_unset, "defense": {**runtime_unset["defense"], "runtime": {}}}, runtime_unset) \
        == (rows, None)  # no runtime options and empty ones are the same
    report.write_text(json.dumps({"rows": rows}))  # made before digests existed
    assert export.evaluation_summary(tmp_path, runs)[0] is None
    for broken in ("{not json", json.dumps({"settings": {}}), json.dumps([1]), json.dumps({"rows": [], "settings": 3})):
        report.write_text(broken)
        with pytest.raises(RunFolderError, match=r"report.json: unreadable evaluation report"):
            export.evaluation_summary(tmp_path, runs)


@pytest.fixture
def load_as_served(monkeypatch):
    """tf.saved_model.load through the TF1 loader (see the module's docstring), giving tensors as it does."""

    class Loaded:
        def __init__(self, path):
            model = _Served(path)
            self.signatures = {name: functools.partial(self._tensors, fn) for name, fn in model.signatures.items()}

        @staticmethod
        def _tensors(fn, images):
            return {k: tf.constant(v) for k, v in fn(images=np.asarray(images)).items()}

    def load(path, *args, **kwargs):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise OSError(f"SavedModel file does not exist at: {path}")
        return Loaded(path)

    monkeypatch.setattr(tf.saved_model, "load", load)


def test_predict_saved_model_lines(tmp_path, load_as_served):
    x, y = load_dataset("fashion_mnist", "test", limit=8)  # labels 9 2 1 1 6 1 4 6
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    detector = BrightnessDetector()
    for purifier, det in ((RoundingPurifier(levels=2), None), (detector, detector)):
        defended = _defended(purifier=purifier, detector=det,
                             threshold=float(np.median(detector.adversarial_score(x))))
        defended.classifier.layers[-1].bias.assign(np.eye(10)[1] * 30.0)  # right on the three trousers
        path = export.export_saved_model(defended, tmp_path, type(purifier).__name__, 1, SHAPE,
                                         metadata={"dataset": "fashion_mnist"})
        out = {k: np.asarray(v) for k, v in defended.predict_outputs(x).items()}
        assert 0 < np.sum(out["classes"] == y) < len(y)
        expected = [f"{path}: {type(purifier).__name__} + toy_cnn, 8 fashion_mnist test images"]
        for i, c in enumerate(out["classes"]):
            line = (f"  image {i}: true {names[y[i]]:<12} predicted {names[c]:<12} p {100 * out['probabilities'][i, c]:.1f} %"
                    + ("" if c == y[i] else "  (wrong)"))
            if det is not None:
                line += f"  score {out['adversarial_score'][i]:.4f}" + ("  FLAGGED" if out["is_adversarial"][i] else "")
            expected.append(line)
        expected.append(f"accuracy {100 * np.mean(out['classes'] == y):.1f} %")
        assert export.predict_saved_model(path) == expected  # 8 images by default
        first_two = f"accuracy {100 * np.mean(out['classes'][:2] == y[:2]):.1f} %"
        assert export.predict_saved_model(path, limit=2) == [expected[0].replace("8 fashion", "2 fashion"),
                                                             *expected[1:3], first_two]
        if det is not None:
            assert 0 < out["is_adversarial"].sum() < len(y)


def test_predict_saved_model_takes_the_data_set_from_the_metadata_and_refuses_other_folders(
        tmp_path, load_as_served, monkeypatch):
    path = export.export_saved_model(_defended(), tmp_path, "m", 1, SHAPE)  # no dataset in the metadata
    assert export.predict_saved_model(path, limit=1)[0].endswith(" 1 fashion_mnist test images")
    loaded = []

    def load(dataset, split, limit):  # MNIST cannot be fetched here: any 28x28x1 images will do
        loaded.append((dataset, split, limit))
        return load_dataset("fashion_mnist", split, limit=limit)

    monkeypatch.setattr(export, "load_dataset", load)
    mnist = export.export_saved_model(_defended(), tmp_path, "mnist", 1, SHAPE, metadata={"dataset": "mnist"})
    assert export.predict_saved_model(mnist, limit=2)[0].endswith(" 2 mnist test images")
    named = export.predict_saved_model(mnist, dataset="fashion_mnist", limit=1)[0]
    assert named.endswith(" 1 fashion_mnist test images")
    assert loaded == [("mnist", "test", 2), ("fashion_mnist", "test", 1)]
    with pytest.raises(export.ExportError, match=r"nothing: not a tfpurify SavedModel \(FileNotFoundError: "):
        export.predict_saved_model(tmp_path / "nothing")
    (path / "assets" / export.METADATA_ASSET).unlink()
    with pytest.raises(export.ExportError, match=r"not a tfpurify SavedModel \(FileNotFoundError: "):
        export.predict_saved_model(path)
