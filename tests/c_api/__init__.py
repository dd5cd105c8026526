"""TensorFlow's C API on an exported SavedModel: `run_signature.c`, built with gcc against the installed wheel."""

import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf


def build_runner(folder):
    """run_signature.c built with gcc against the headers and library of the installed TensorFlow wheel:
    TF_LoadSessionFromSavedModel, the loader TF Serving is built on (its binary cannot be installed here)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (.ci/run installs it): the C API check needs it")
    wheel = pathlib.Path(tf.__file__).parent
    runner = pathlib.Path(folder) / "run_signature"
    subprocess.run(["gcc", "-O1", "-Wall", f"-I{wheel / 'include'}",
                    str(pathlib.Path(__file__).parent / "run_signature.c"), "-o", str(runner),
                    str(wheel / "libtensorflow_cc.so.2"), str(wheel / "libtensorflow_framework.so.2"),
                    f"-Wl,-rpath,{wheel}"], check=True, timeout=300)
    return runner


def run_through_c_api(runner, directory, signature, x, folder):
    """The signature's outputs, {key: flat numpy array}, as TensorFlow's C API computes them for images `x`."""
    from tensorflow.python.tools import saved_model_utils

    definition = saved_model_utils.get_meta_graph_def(str(directory), "serve").signature_def[signature]
    keys = sorted(definition.outputs)
    folder = pathlib.Path(folder)
    np.asarray(x, np.float32).tofile(folder / "in.f32")
    result = subprocess.run([str(runner), str(directory), definition.inputs["images"].name, *map(str, x.shape),
                             str(folder / "in.f32"), str(folder / "out"), *(definition.outputs[k].name for k in keys)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    return {k: np.fromfile(folder / f"out.{i}", dtype=tf.dtypes.as_dtype(definition.outputs[k].dtype).as_numpy_dtype)
            for i, k in enumerate(keys)}
