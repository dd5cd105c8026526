"""Helpers shared by the benchmark scripts: environment facts and results writing."""

import json
import os
import pathlib
import platform

import tensorflow as tf

from tfpurify.reports import attack_label

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def environment():
    return {"cpu_count": os.cpu_count(), "gpu": bool(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def rows_table(rows):
    """Markdown table of result rows (threat model always shown)."""
    lines = ["| defense | classifier | threat model | attack | eps | accuracy | plain | parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r.get("params", {}).items()
                           if k not in ("clip_min", "clip_max", "targeted"))  # the same in every row
        eps = "-" if r["eps"] is None else f"{r['eps']:g}"
        plain = "-" if r.get("plain_accuracy") is None else f"{100 * r['plain_accuracy']:.1f} %"
        lines.append(f"| {r['defense']} | {r['classifier']} | {r['threat_model']} | {attack_label(r)} | "
                     f"{eps} | {100 * r['accuracy']:.1f} % | {plain} | {params} |")
    return "\n".join(lines)


def write_results(name, results, markdown):
    """Writes benchmarks/results/<name>.json and its .md twin."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
