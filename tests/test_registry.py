"""tfpurify.registry: built-ins registered, plug-ins from entry points loaded once, from the top."""

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tfpurify import registry
from tfpurify.attacks.registry import ATTACKS
from tfpurify.defenses.registry import REGISTRY
from tfpurify.errors import PluginError

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLUGIN = pathlib.Path(__file__).resolve().parent / "plugins" / "tfpurify_toy"


def test_built_ins_are_registered_with_their_learned_attack():
    defenses, attacks = registry.load()
    assert {"aaa", "cowboy", "denoising_ae", "fbgan", "gcln", "l2l_da", "pgd_at"} <= set(defenses)
    assert {"fgsm", "pgd", "autoattack", "latent", "l2l_da"} <= set(attacks)  # l2l_da: from its defense module
    assert registry.load() is registry.load()  # loads once


def _entry_points(*entries):
    def entry_points(group):
        return [e for e in entries if e.group == group]

    return entry_points


def test_a_plug_in_that_fails_to_import_is_one_clear_error(monkeypatch):
    broken = importlib.metadata.EntryPoint("ghost", "no_such_package.defense", "tfpurify.defenses")
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points(broken))
    with pytest.raises(PluginError, match="plug-in 'ghost' .*fails to load: ModuleNotFoundError"):
        registry.load.__wrapped__()  # the uncached load: what a first call does


def test_a_plug_in_must_register_the_name_it_promises(monkeypatch):
    # the module imports fine but registers no attack called "fast_gradient"
    wrong = importlib.metadata.EntryPoint("fast_gradient", "tfpurify.attacks.gradient", "tfpurify.attacks")
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points(wrong))
    with pytest.raises(PluginError, match="registered no attack named 'fast_gradient'"):
        registry.load.__wrapped__()
    assert "fast_gradient" not in ATTACKS and "ghost" not in REGISTRY


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """An environment in which the toy plug-in package is installed (into a folder on PYTHONPATH)."""
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("source") / "tfpurify_toy"
    shutil.copytree(PLUGIN, source)  # the build writes beside its sources: keep them out of the checkout
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True, timeout=300,
                   cwd=source)
    assert (target / "tfpurify_toy" / "defense.py").is_file()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return env


def _tfpurify(env, *args):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)


def test_an_installed_plug_in_joins_train_and_eval(plugin_env, cnn_run, tmp_path):
    shown = _tfpurify(plugin_env, "train", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "toy_blur" in shown.stdout and "fbgan" in shown.stdout
    options = _tfpurify(plugin_env, "train", "toy_blur", "--help")
    assert options.returncode == 0 and "--strength" in options.stdout, options.stderr
    attacks_help = _tfpurify(plugin_env, "eval", "--help")
    assert attacks_help.returncode == 0 and "toy_noise" in attacks_help.stdout, attacks_help.stderr
    report = tmp_path / "report.md"
    evaluated = _tfpurify(plugin_env, "eval", str(cnn_run), "--attacks", "toy_noise,fgsm", "--eps", "0.1",
                          "--limit", "32", "--no-sanity-checks", "--report", str(report))
    assert evaluated.returncode == 0, evaluated.stderr
    rows = json.loads(report.with_suffix(".json").read_text())["rows"]
    attacked = {r["attack"]: r["accuracy"] for r in rows if r["threat_model"] == "none"}
    clean = next(r["accuracy"] for r in rows if r["threat_model"] == "clean")
    assert "toy_noise" in attacked and attacked["toy_noise"] <= clean
    # without the plug-in on the path, the same command does not know the attack
    bare = {**plugin_env, "PYTHONPATH": str(ROOT)}
    unknown = _tfpurify(bare, "eval", str(cnn_run), "--attacks", "toy_noise", "--limit", "8", "--no-sanity-checks",
                        "--report", str(tmp_path / "other.md"))
    assert unknown.returncode == 1 and "unknown attack 'toy_noise'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
