"""Writers for `RobustnessReport`: JSON, a Markdown table, and a PNG grid of images.

Every row names its threat model; warnings from the sanity checks are printed, never hidden.
"""

import json
import math
import pathlib

import numpy as np

from tfpurify.metrics import percent
from tfpurify.runs import atomic_write_text

__all__ = ["attack_label", "to_markdown", "sanity_lines", "detection_lines", "corruption_lines", "write_json", "write_markdown", "save_image_grid", "save_report_grid", "save_accuracy_curves", "save_pictures", "write_report"]


def _fmt_value(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " + ".join(str(v) for v in value)
    return str(value)


def _fmt_params(params):
    keep = {k: v for k, v in params.items() if k not in ("clip_min", "clip_max", "targeted")}
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in keep.items())


def attack_label(row):
    """The attack column: "worst case", or the attack, with the attacks before it in a cascade."""
    if row["attack"] == "worst_case":
        return "**worst case**"
    return row["attack"] + (f" (after {', '.join(row['after'])})" if row.get("after") else "")


def _pct(value):
    return percent(value)


def _settings_lines(settings, checks_run=()):
    """What shaped the numbers: seed, batch, per threat model attack target, detector, checks (`checks_run`:
    the report's sanity records)."""
    if not settings:
        return []
    cascade = {True: ", attacks cascaded", False: ", every attack on every example"}.get(settings.get("cascade"), "")
    lines = ["", f"Settings: seed {settings.get('seed')}, batch size {settings.get('batch_size')}{cascade}."]
    for tm, target in settings.get("threat_models", {}).items():
        if target:
            lines.append(f"- {tm}: {_fmt_params(target)}")
    if "detector" in settings:
        lines.append(f"- detector: {_fmt_params(settings['detector'])}")
    for role, run in (settings.get("runs") or {}).items():
        if isinstance(run, dict):
            runtime = run.get("runtime")
            lines.append(f"- {role} run: {run.get('path')}, weights SHA-256 {run.get('weights_sha256')}"
                         + (f", runtime options {_fmt_params(runtime)}" if runtime else ""))
    checks = settings.get("sanity_checks", {})
    ran = sorted({c["threat_model"] for c in checks_run if c.get("status") != "skipped"})
    if checks and not checks.get("enabled"):
        lines.append("- sanity checks: off")
    elif checks and not ran:
        lines.append("- sanity checks: on, but none applied to these threat models (reasons below)")
    elif checks:
        seconds = checks.get("seconds", {})
        took = ", ".join(f"{seconds[tm]:.0f} s under {tm}" for tm in ran if tm in seconds)
        lines.append(f"- sanity checks: ran under {', '.join(ran)} on the first {checks.get('n')} examples"
                     + (f" ({took})" if took else "")
                     + f"; gradient-free check: {_fmt_params(checks.get('gradient_free_attack', {}))}")
    return lines


def sanity_lines(checks, warnings):
    """Markdown lines: checks passed/ran/skipped with reasons, then warnings (never "No warnings" unchecked)."""
    ran = [c for c in checks if c.get("status", "passed") != "skipped"]
    skipped = [c for c in checks if c.get("status") == "skipped"]
    lines = []
    if checks:
        passed = sum(bool(c["passed"]) for c in ran)
        lines += ["", f"Sanity checks 1-5 (gradient masking, weak attacks): {passed}/{len(ran)} passed, {len(skipped)} skipped."]
        reasons = {}
        for c in skipped:
            reasons.setdefault((c["threat_model"], c["reason"]), []).append(str(c["check"]))
        lines += [f"- [{tm}] check {', '.join(nums)} skipped: {reason}" for (tm, reason), nums in reasons.items()]
    lines.append("")
    if warnings:
        lines += [f"- WARNING: {w}" for w in warnings]
    elif ran:
        lines.append(f"No warnings from the {len(ran)} checks that ran.")
    else:
        lines.append("No sanity check ran: nothing here is checked against gradient masking.")
    return lines


def detection_lines(detection):
    """Markdown lines of the detector table (empty without a detector)."""
    if not detection:
        return []
    lines = ["", "Detection: ROC-AUC and TPR over the n successful adversarial examples of clean-correct "
                 "inputs; FPR over all clean inputs; system = clean input accepted and correct, and "
                 "attacked input flagged or correct.",
             "",
             "| threat model | attack | eps | n | ROC-AUC | TPR | FPR | detected or correct | system "
             "| accuracy on accepted |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for det in detection:
        eps = "-" if det["eps"] is None else f"{det['eps']:g}"
        auc = "-" if det["roc_auc"] is None else f"{det['roc_auc']:.3f}"
        lines.append(f"| {det['threat_model']} | {attack_label(det)} | {eps} | {det['n_adversarial']} | {auc} | "
                     f"{_pct(det['tpr'])} | {_pct(det['fpr'])} | {_pct(det['detected_or_correct'])} | "
                     f"{_pct(det['system_accuracy'])} | {_pct(det['accuracy_on_accepted'])} |")
    return lines


def corruption_lines(rows):
    """Markdown table of common-corruption rows: one line per corruption, plain accuracy per severity.

    Each cell reads `bare / defended` when the rows hold two pipelines (the classifier alone and
    the defense), else the one accuracy.
    """
    if not rows:
        return []
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    severities = sorted({r["params"]["severity"] for r in rows})
    cells = {(r["attack"], r["params"]["severity"], r["defense"]): r["plain_accuracy"] for r in rows}
    lines = ["", f"## Common corruptions (accuracy on corrupted test images, {' / '.join(defenses)})", "",
             "| corruption | " + " | ".join(f"severity {s}" for s in severities) + " | mean |",
             "|---|" + "---|" * (len(severities) + 1)]
    for name in dict.fromkeys(r["attack"] for r in rows):
        def cell(values):
            return " / ".join(_pct(v) for v in values)

        per = [[cells.get((name, s, d)) for d in defenses] for s in severities]
        means = [float(np.mean([p[i] for p in per if p[i] is not None])) for i in range(len(defenses))]
        lines.append(f"| {name} | " + " | ".join(cell(p) for p in per) + f" | {cell(means)} |")
    return lines


def to_markdown(report):
    """Renders a report as a Markdown document: header, tables, settings, sanity checks, warnings."""
    d = report.to_dict()
    lines = [
        f"# Robustness report: {d['defense']} on {d['classifier'] or 'classifier'} ({d['dataset'] or 'data'})",
        "",
        f"{d['n_examples']} test examples, seed {d['seed']}, threat models: {', '.join(d['threat_models'])}. "
        "An example counts as robust under an attack only if it is correct clean and under the attack; "
        "worst case = correct under every attack of that threat model and eps, the sanity checks' attacks "
        "included; plain = the papers' metric, correct under the attack whatever happened clean; evals/example = gradient evaluations (queries for gradient-free attacks) per example. "
        + ("Cascade: an attack marked (after ...) ran only on the examples the attacks before it left robust, "
           "and its accuracy counts them too (--no-cascade: every attack on every example). "
           if d.get("settings", {}).get("cascade") else "")
        + ("A stochastic pipeline's accuracy is one draw; beside it, robust in every one of N draws (that draw "
           "and N - 1 fresh ones) and in the majority of them. "
           if any(r.get("score_draws", 1) > 1 for r in d["rows"]) else "")
        + "How to read it: docs/evaluation.md.",
        "",
    ]
    if not d.get("finished", True):
        lines += ["> **Unfinished.** The evaluation had not ended when this was written (it is running, or was "
                  "stopped): the rows below are the attacks and checks it had finished.", ""]
    models = {row["threat_model"] for row in d["rows"]}
    if "graybox" in models and "whitebox" not in models:
        lines += ["> **Gray-box only.** The attacks saw the classifier, never the defense: an attacker who knows "
                  "the defense is not measured here, so no number in this report is a robustness claim.", ""]
    lines += [
        "| defense | threat model | attack | eps | accuracy | plain | evals/example | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in d["rows"]:
        if row["threat_model"] == "corruption":
            continue  # their own table below
        eps = "-" if row["eps"] is None else f"{row['eps']:g}"
        attack = attack_label(row)
        evals = row.get("grad_evals_per_example")
        accuracy = _pct(row["accuracy"])
        if row.get("score_draws", 1) > 1:
            accuracy += (f" (all {row['score_draws']} draws {_pct(row['accuracy_all_draws'])}, "
                         f"majority {_pct(row['accuracy_majority'])})")
        lines.append(f"| {row['defense']} | {row['threat_model']} | {attack} | {eps} | {accuracy} | "
                     f"{_pct(row.get('plain_accuracy'))} | {'-' if evals is None else f'{evals:g}'} | "
                     f"{_fmt_params(row['params'])} |")
    lines += detection_lines(d["detection"])
    lines += corruption_lines([r for r in d["rows"] if r["threat_model"] == "corruption"])
    lines += _settings_lines(d.get("settings", {}), d["sanity_checks"])
    lines += sanity_lines(d["sanity_checks"], d["warnings"])
    return "\n".join(lines) + "\n"


def write_json(report, path):
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


def write_markdown(report, path):
    atomic_write_text(path, to_markdown(report))


def _save_figure(fig, path):
    """Writes a matplotlib figure as PNG atomically (temporary sibling, then rename) and closes it."""
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def save_accuracy_curves(path, eps, curves, ylabel):
    """A PNG of accuracy (in percent) against L-inf eps, one line per name in `curves` ({name: [accuracy at
    each eps]})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(eps, [100 * v for v in values], marker="o", label=name)
    ax.set_xlabel("eps (L-inf)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    _save_figure(fig, path)


def save_image_grid(path, rows, labels, class_names=None, title=None, true_labels=None):
    """Saves a PNG grid: one row per image set, the predicted label above each image.

    Args:
      path: output PNG path.
      rows: {row title: [n, H, W, C] images in [0, 1]}.
      labels: {row title: [n] predicted class ids} (same keys as rows), or None for no labels.
      class_names: names for class ids, or None to print the ids.
      title: figure title.
      true_labels: [n] true class ids, or None; a prediction that differs is printed in red.
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
                wrong = true_labels is not None and label != int(true_labels[c])
                ax.set_title(class_names[label] if class_names else str(label), fontsize=6.5,
                             color="tab:red" if wrong else "black")
        axes[r][0].text(-0.1, 0.5, name, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    _save_figure(fig, path)


def save_score_violins(path, scores, threshold=None, title="detector scores"):
    """Saves a PNG of one violin per score set (clean first), the threshold as a dashed line.

    Args:
      path: output PNG path.
      scores: {label: [N] adversarial scores}.
      threshold: the detector flags scores above it (None: no line).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(scores)
    values = [np.asarray(scores[k], np.float64) for k in labels]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(labels), 3.6))
    ax.violinplot([v[np.isfinite(v)] for v in values], showmedians=True)
    if threshold is not None and np.isfinite(threshold):
        ax.axhline(threshold, linestyle="--", color="gray", linewidth=1)
        ax.text(len(labels) + 0.4, threshold, "threshold", fontsize=7, va="bottom", ha="right", color="gray")
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("adversarial score (higher = flagged)", fontsize=8)
    ax.set_title(title, fontsize=9)
    _save_figure(fig, path)


def save_pictures(pictures, folder):
    """Writes each {name: {row title: images}} of `Purifier.pictures` as folder/<name>.png."""
    paths = {}
    for name, rows in pictures.items():
        paths[name] = pathlib.Path(folder) / f"{name}.png"
        save_image_grid(paths[name], rows, None, title=name.replace("_", " "))
    return paths


def save_report_grid(report, path, class_names=None):
    """The report's sample images: clean, then each attack's adversarial examples, the predicted class above
    each (red where wrong)."""
    rows = {"clean": report.x_sample}
    labels = {"clean": report.clean_pred_sample}
    for r in report.results:
        key = f"{r.threat_model}/{r.attack}" + ("" if r.eps is None or math.isnan(r.eps) else f" {r.eps:g}")
        rows[key], labels[key] = r.x_adv_sample, r.pred_sample
    true = [class_names[int(v)] if class_names else str(int(v)) for v in report.y_sample]
    save_image_grid(path, rows, labels, class_names,
                    title=f"predicted class above each image (red: wrong); true: {', '.join(true)}",
                    true_labels=report.y_sample)


def write_report(report, markdown_path, class_names=None):
    """Writes `<stem>.md`, `<stem>.json` and `<stem>.png` (clean vs adversarial grid) side by side.

    Returns:
      dict of the paths written.
    """
    md = pathlib.Path(markdown_path)
    paths = {"markdown": md, "json": md.with_suffix(".json"), "grid": md.with_suffix(".png")}  # + "scores" (detectors)
    write_markdown(report, paths["markdown"])
    write_json(report, paths["json"])
    save_report_grid(report, paths["grid"], class_names)
    if report.corruption_grid:  # one image under each corruption, severities 0-5
        paths["corruptions"] = md.with_name(f"{md.stem}-corruptions.png")
        save_image_grid(paths["corruptions"], report.corruption_grid, None,
                        title="one test image under each corruption, severity 0 (left) to 5")
    if report.detector_scores:  # clean vs each attack, as the Cowboy paper's Fig. 3
        paths["scores"] = md.with_name(f"{md.stem}-scores.png")
        save_score_violins(paths["scores"], report.detector_scores,
                           report.settings.get("detector", {}).get("threshold"),
                           title=f"{report.defense} detector scores")
    return paths
