import builtins
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from tfpurify import classifiers, corruptions
from tfpurify.errors import InputValidationError


@pytest.fixture(scope="module")
def images(fmnist_test):
    return fmnist_test[0][:16]


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_every_corruption_keeps_shape_and_range_and_changes_the_image(images, name):
    out = corruptions.corrupt(images, name, 3)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - images).mean() > 2 / 255, f"{name} at severity 3 left the images (nearly) unchanged"


def test_colour_images_too():
    x = np.random.RandomState(0).rand(3, 32, 32, 3).astype(np.float32)
    for name in corruptions.CORRUPTIONS:
        out = corruptions.corrupt(x, name, 5)
        assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0, name


def test_severity_zero_is_the_identity_and_seeds_repeat(images):
    assert np.array_equal(corruptions.corrupt(images, "motion_blur", 0), images)
    a = corruptions.corrupt(images, "gaussian_noise", 2, seed=1)
    assert np.array_equal(a, corruptions.corrupt(images, "gaussian_noise", 2, seed=1))
    assert not np.array_equal(a, corruptions.corrupt(images, "gaussian_noise", 2, seed=2))


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "gaussian_blur", "contrast", "pixelate"])
def test_higher_severity_corrupts_more(images, name):
    change = [np.abs(corruptions.corrupt(images, name, s) - images).mean() for s in (1, 3, 5)]
    assert change[0] < change[1] < change[2], change


def test_contrast_keeps_the_mean_and_scales_deviations(images):
    out = corruptions.corrupt(images[:1], "contrast", 5)  # (x - mean) * 0.15 + mean, through uint8
    x = np.round(images[:1] * 255) / 255
    np.testing.assert_allclose(out, (x - x.mean()) * 0.15 + x.mean(), atol=1.5 / 255)


def test_bad_names_and_severities_are_one_clear_error(images):
    assert corruptions.parse_corruptions("all") == list(corruptions.CORRUPTIONS)
    with pytest.raises(InputValidationError, match="unknown corruption fog"):
        corruptions.parse_corruptions("gaussian_noise,fog")
    with pytest.raises(InputValidationError, match="severity must be an integer in 0-5"):
        corruptions.corrupt(images, "contrast", 6)


def test_missing_extra_names_it(images, monkeypatch):
    real_import = builtins.__import__

    def no_albumentations(name, *args, **kwargs):
        if name == "albumentations":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_albumentations)
    with pytest.raises(InputValidationError, match=r"tfpurify\[corruptions\]"):
        corruptions.corrupt(images, "contrast", 1)


def test_eval_corruptions_bare_and_defended_side_by_side(cnn_run, dae_run, cnn, defended_dae, fmnist_test, tmp_path):
    report = tmp_path / "report.md"
    result = CliRunner().invoke(cli, [
        "eval", str(dae_run), "--classifier", str(cnn_run), "--threat-model", "none", "--attacks", "fgsm",
        "--limit", "64", "--no-sanity-checks", "--corruptions", "gaussian_noise,contrast", "--severities", "1,5",
        "--report", str(report)])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(report.with_suffix(".json").read_text())["rows"] if r["threat_model"] == "corruption"]
    assert len(rows) == 2 * 2 * 2  # corruptions x severities x (bare, defended)
    acc = {(r["defense"], r["attack"], r["params"]["severity"]): r for r in rows}
    for key, row in acc.items():
        assert row["accuracy"] <= row["plain_accuracy"]
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    for defense, model in (("none", cnn), ("denoising_ae", defended_dae)):  # the rows score what they name
        for name in ("gaussian_noise", "contrast"):
            expected = classifiers.accuracy(model, corruptions.corrupt(x, name, 5), y)
            assert acc[(defense, name, 5)]["plain_accuracy"] == pytest.approx(expected)
    assert acc[("none", "contrast", 5)]["plain_accuracy"] < acc[("none", "contrast", 1)]["plain_accuracy"]
    md = report.read_text()
    assert "## Common corruptions" in md and "| gaussian_noise |" in md
    assert (tmp_path / "report-corruptions.png").stat().st_size > 1000


def test_eval_bad_corruption_fails_before_attacking(cnn_run):
    result = CliRunner().invoke(cli, ["eval", str(cnn_run), "--corruptions", "fog"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unknown corruption fog" in result.output
    result = CliRunner().invoke(cli, ["eval", str(cnn_run), "--corruptions", "all", "--severities", "0"])
    assert result.exit_code == 1 and "not an integer in 1-5" in result.output
