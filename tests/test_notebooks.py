"""The notebooks run end to end at tiny settings (TFPURIFY_QUICK=1), so they cannot rot."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

# What each notebook must print, besides running without error.
EXPECTED = {"quickstart.ipynb": ["reloaded; max difference", "| denoising_ae | whitebox | pgd (after fgsm) |"],
            "fbgan.ipynb": ["categorical codes:", "| fbgan | whitebox | pgd (after fgsm) | 0.3 |", "reloaded; max difference"],
            "zoo.ipynb": ["denoising_ae: denoising_ae + cnn", ": verified", "# Leaderboard: fashion_mnist",
                          "zoo:denoising_ae white-box worst case at eps 0.1 on 32 images"]}
NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TFPURIFY_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    for text in EXPECTED.get(path.name, []):
        assert text in outputs
