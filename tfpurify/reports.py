"""Writers for `RobustnessReport`: JSON, a Markdown table, and a PNG grid of images.

Every row names its threat model; warnings from the sanity checks are printed, never hidden.
"""

import json
import math
import pathlib

import numpy as np

from tfpurify.runs import atomic_write_text

__all__ = ["to_markdown", "write_json", "write_markdown", "save_image_grid", "save_pictures", "write_report"]


def _fmt_params(params):
    keep = {k: v for k, v in params.items() if k not in ("clip_min", "clip_max", "targeted")}
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())


def _pct(value):
    return f"{100 * value:.1f} %"


def to_markdown(report):
    """Renders a report as a Markdown document: header, one table, sanity checks, warnings."""
    d = report.to_dict()
    lines = [
        f"# Robustness report: {d['defense']} on {d['classifier'] or 'classifier'} ({d['dataset'] or 'data'})",
        "",
        f"{d['n_examples']} test examples, seed {d['seed']}, threat models: {', '.join(d['threat_models'])}. "
        "An example counts as robust under an attack only if it is correct clean and under the attack; "
        "worst case = correct under every attack of that threat model and eps.",
        "",
        "| defense | threat model | attack | eps | accuracy | parameters |",
        "|---|---|---|---|---|---|",
    ]
    for row in d["rows"]:
        eps = "-" if row["eps"] is None else f"{row['eps']:g}"
        attack = "**worst case**" if row["attack"] == "worst_case" else row["attack"]
        lines.append(f"| {row['defense']} | {row['threat_model']} | {attack} | {eps} | {_pct(row['accuracy'])} | "
                     f"{_fmt_params(row['params'])} |")
    if d["detection"]:
        lines += ["", "| detection: threat model | attack | eps | ROC-AUC | TPR | FPR | detected or correct |",
                  "|---|---|---|---|---|---|---|"]
        for det in d["detection"]:
            eps = "-" if det["eps"] is None else f"{det['eps']:g}"
            lines.append(f"| {det['threat_model']} | {det['attack']} | {eps} | {det['roc_auc']:.3f} | "
                         f"{_pct(det['tpr'])} | {_pct(det['fpr'])} | {_pct(det['detected_or_correct'])} |")
    if d["sanity_checks"]:
        passed = sum(c["passed"] for c in d["sanity_checks"])
        lines += ["", f"Sanity checks (EVALUATION.md 1-4): {passed}/{len(d['sanity_checks'])} passed."]
    lines += [""] + ([f"- WARNING: {w}" for w in d["warnings"]] or ["No warnings."])
    return "\n".join(lines) + "\n"


def write_json(report, path):
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


def write_markdown(report, path):
    atomic_write_text(path, to_markdown(report))


def save_image_grid(path, rows, labels, class_names=None, title=None):
    """Saves a PNG grid: one row per image set, predicted labels under each image.

    Args:
      path: output PNG path.
      rows: {row title: [n, H, W, C] images in [0, 1]}.
      labels: {row title: [n] predicted class ids} (same keys as rows), or None for no labels.
      class_names: names for class ids, or None to print the ids.
      title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.5 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(images):
                continue
            img = np.clip(images[c], 0, 1)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            if labels is not None:
                label = int(labels[name][c])
                ax.set_title(class_names[label][:10] if class_names else str(label), fontsize=7)
        axes[r][0].text(-0.1, 0.5, name, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def save_pictures(pictures, folder):
    """Writes each {name: {row title: images}} of `Purifier.pictures` as folder/<name>.png."""
    paths = {}
    for name, rows in pictures.items():
        paths[name] = pathlib.Path(folder) / f"{name}.png"
        save_image_grid(paths[name], rows, None, title=name.replace("_", " "))
    return paths


def write_report(report, markdown_path, class_names=None):
    """Writes `<stem>.md`, `<stem>.json` and `<stem>.png` (clean vs adversarial grid) side by side.

    Returns:
      dict of the paths written.
    """
    md = pathlib.Path(markdown_path)
    paths = {"markdown": md, "json": md.with_suffix(".json"), "grid": md.with_suffix(".png")}
    write_markdown(report, paths["markdown"])
    write_json(report, paths["json"])
    rows = {"clean": report.x_sample}
    labels = {"clean": report.clean_pred_sample}
    for r in report.results:
        key = f"{r.threat_model}/{r.attack}" + ("" if r.eps is None or math.isnan(r.eps) else f" {r.eps:g}")
        rows[key], labels[key] = r.x_adv_sample, r.pred_sample
    save_image_grid(paths["grid"], rows, labels, class_names,
                    title=f"true labels: {', '.join(str(int(v)) for v in report.y_sample)}")
    return paths
