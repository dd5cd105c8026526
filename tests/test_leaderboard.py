"""The leaderboard on a shrunken protocol: cells cached and resumed, rows sorted, intervals, the three tables."""

import dataclasses
import html.parser
import json
import os
import pathlib
import shutil
import socket
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from tfpurify import data, evaluation, leaderboard, metrics, runs
from tfpurify.errors import InputValidationError
from tfpurify.evaluation.report import jsonable

SMALL = leaderboard.Protocol(n=24, eps=(0.1, 0.2), attacks=("fgsm", "pgd"), pgd_steps=5, pgd_restarts=1,
                             eot_samples=1, score_draws=2, sanity_checks=False, batch_size=24, minutes_per_entry=None)


@pytest.fixture(autouse=True)
def _attacks_at_once(monkeypatch):
    """Each attack of a cell at once, as these tests count attacks (`test_a_cell_s_attacks_run_in_chunks` turns
    the chunks on)."""
    monkeypatch.setattr(leaderboard, "CHUNK_SECONDS", None)


@pytest.fixture(scope="module")
def board(tmp_path_factory, dae_run, cnn_run):
    out = tmp_path_factory.mktemp("leaderboard")
    entries = [leaderboard.Entry("none", str(cnn_run)), leaderboard.Entry("dae", str(dae_run), str(cnn_run))]
    return out, entries, leaderboard.run(entries, out, SMALL, log=lambda line: None)


def test_rows_hold_every_column_sorted_by_the_white_box_worst_case(board):
    out, _, rows = board
    assert [r["entry"] for r in rows] == sorted(
        (r["entry"] for r in rows), key=lambda name: -next(r for r in rows if r["entry"] == name)["whitebox 0.1"]["accuracy"])
    for row in rows:
        assert row["n"] == 24 and row["dataset"] == "fashion_mnist"
        for key in ("clean", "whitebox 0.1", "whitebox 0.2", "graybox 0.1", "graybox 0.2"):
            cell = row[key]
            assert cell["low"] <= cell["accuracy"] <= cell["high"], (row["entry"], key, cell)
        assert row["whitebox 0.2"]["accuracy"] <= row["whitebox 0.1"]["accuracy"] <= row["clean"]["accuracy"]
        assert row["clean"]["accuracy"] > 0.5
    bare = next(r for r in rows if r["entry"] == "none")  # attacked as it is: one cell per eps for both columns
    assert bare["graybox 0.1"] == bare["whitebox 0.1"] and bare["purification_images_per_second"] is None
    assert bare["whitebox 0.1"]["accuracy"] < bare["clean"]["accuracy"]  # PGD breaks a bare cnn
    dae = next(r for r in rows if r["entry"] == "dae")
    assert dae["purification_images_per_second"] > 0 and dae["graybox 0.1"]["attacks"] == ["fgsm", "pgd"]
    assert dae["whitebox 0.1"]["attacks"] == ["fgsm", "pgd", "pgd_recon", "latent"]  # the purifier's own attacks
    assert bare["whitebox 0.1"]["attacks"] == ["fgsm", "pgd"]
    for row in rows:  # the exported SavedModel, timed per request
        latency = row["serving_latency_ms"]
        assert 0 < latency["batch 1"]["p50"] <= latency["batch 1"]["p99"] and latency["batch 256"]["calls"] == 5
        assert latency["batch 256"]["p50"] > latency["batch 1"]["p50"]
    written = json.loads((out / "fashion_mnist.json").read_text())
    assert written["protocol"] == SMALL.to_dict() and [r["entry"] for r in written["rows"]] == [r["entry"] for r in rows]


def test_the_wilson_interval_by_hand():
    low, high = metrics.accuracy_interval(87, 100)
    p, n, z = 0.87, 100, 1.959964
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-6)
    assert metrics.accuracy_interval(0, 0) == (0.0, 1.0) and metrics.accuracy_interval(10, 10)[1] == 1.0


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.images, self.loaded = 0, [], []

    def handle_starttag(self, tag, attrs):
        self.rows += tag == "tr"
        if tag == "img":
            self.images.append(dict(attrs)["src"])
            self.loaded.append(dict(attrs).get("data-loaded"))


def test_the_markdown_and_html_tables_show_every_entry_and_the_picture(board):
    out, entries, rows = board
    markdown = (out / "fashion_mnist.md").read_text()
    assert markdown.count("\n| ") == 1 + len(rows) and "Wilson" in markdown
    assert markdown.count("| 24 (below the protocol's minimum) |") == len(rows)  # 24 images: not a row that counts
    page = _Page()
    page.feed((out / "fashion_mnist.html").read_text())
    pictures = ["fashion_mnist_eps.png"] + [f"fashion_mnist_{r['entry']}.png" for r in rows]
    assert page.rows == 1 + len(rows) and page.images == pictures
    for picture in pictures:
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({picture})" in markdown


def test_the_summary_table_holds_every_entry_in_rank_order_with_its_intervals(board):
    out, _, rows = board
    summary = (out / "fashion_mnist_summary.md").read_text().splitlines()
    assert summary[0].startswith("| # | entry |") and len(summary) == 2 + len(rows)
    for i, (line, row) in enumerate(zip(summary[2:], rows), 1):
        cells = [c.strip() for c in line.strip("|").split("|")]
        n = str(row["n"]) + (" (below the protocol's minimum)" if row["n"] < SMALL.min_n else "")
        assert cells[:4] == [str(i), row["entry"], f"{row['defense']} + {row['classifier']}", n]
        assert cells[5] == leaderboard._pct(row["whitebox 0.1"]) and "(" in cells[5]


PROJECT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (PROJECT / "leaderboard" / "fashion_mnist.json").exists(),
                    reason="no leaderboard committed yet")
def test_the_readme_opens_with_the_committed_leaderboard():
    """The README's table is the committed leaderboard's summary, line for line, before any other section."""
    committed = json.loads((PROJECT / "leaderboard" / "fashion_mnist.json").read_text())
    protocol = leaderboard.Protocol(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in committed["protocol"].items()})
    table = "\n".join(leaderboard.summary_table(committed["rows"], protocol))
    readme = (PROJECT / "README.md").read_text()
    assert table in readme, "README.md lacks the committed leaderboard's table (leaderboard/fashion_mnist_summary.md)"
    assert readme.index(table) < readme.index("## Set up on a fresh machine")


def test_a_browser_renders_the_page_with_its_table_and_picture(board):
    """Headless Chromium (Debian's; .ci/run installs it) opens the static page: the table's rows are there and
    the picture loads (the page marks each image loaded or not)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    out, _, rows = board
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", (out / "fashion_mnist.html").resolve().as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    page = _Page()
    page.feed(dom)
    assert page.rows == 1 + len(rows) and page.loaded == ["yes"] * 3, (page.rows, page.loaded, dom[-500:])
    (out / "fashion_mnist_eps.png").rename(out / "moved.png")  # a picture that does not load is seen as such
    try:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", (out / "fashion_mnist.html").resolve().as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
        page = _Page()
        page.feed(dom)
        assert page.loaded == ["no", "yes", "yes"]
    finally:
        (out / "moved.png").rename(out / "fashion_mnist_eps.png")


def test_a_rerun_evaluates_only_the_cells_it_lacks(board, monkeypatch):  # after the tables' test: it rewrites them
    out, entries, rows = board
    calls = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(k["threat_model"]) or real(*a, **k))
    again = leaderboard.run(entries, out, SMALL, log=lambda line: None)
    assert calls == [] and [r["whitebox 0.1"] for r in again] == [r["whitebox 0.1"] for r in rows]
    (out / "cache" / "dae" / "graybox-0.2.json").unlink()  # a cell that never finished
    leaderboard.run(entries, out, SMALL, log=lambda line: None)
    assert calls == ["graybox"]
    leaderboard.run(entries[:1], out, leaderboard.Protocol(**{**SMALL.to_dict(), "eps": (0.1,), "n": 16}),
                    log=lambda line: None)  # another protocol: nothing cached counts
    assert calls == ["graybox", "none"]
    cell = out / "cache" / "dae" / "whitebox-0.1.json"  # a cell cached before a protocol field existed
    old = json.loads(cell.read_text())
    del old["protocol"]["sanity_queries"]
    cell.write_text(json.dumps(old))
    leaderboard.run(entries[1:], out, SMALL, log=lambda line: None)
    assert calls == ["graybox", "none"]  # still counts: 5000 queries is what was done before the field
    del old["protocol"]["purifier_attacks"]  # before that field, no attack on the purifier itself ran
    cell.write_text(json.dumps(old))
    leaderboard.run(entries[1:], out, SMALL, log=lambda line: None)
    assert calls == ["graybox", "none", "whitebox"]
    renamed = dataclasses.replace(entries[1], name="dae", classifier=entries[0].run + "-copy")
    shutil.copytree(entries[0].run, renamed.classifier)  # the same weights elsewhere: another run, measured again
    leaderboard.run([renamed], out, SMALL, log=lambda line: None)
    assert calls == ["graybox", "none", "whitebox", "graybox", "graybox", "whitebox", "whitebox"]


class _Killed(Exception):
    pass


def _killed_at_first_checkpoint(real, threat_model=None):
    """`real` (evaluation.evaluate) stopped by _Killed right after its first checkpoint (only where it evaluates
    `threat_model`, if one is named)."""
    def evaluate(*args, checkpoint=None, **kwargs):
        def stop(report):
            checkpoint(report)
            raise _Killed()
        chosen = threat_model is None or kwargs.get("threat_model") == threat_model
        return real(*args, checkpoint=stop if chosen else checkpoint, **kwargs)
    return evaluate


def test_a_cell_killed_after_an_attack_resumes_with_the_next_one(monkeypatch, cnn_run, tmp_path):
    """A cell is resumable per attack: killed after its first attack, a rerun keeps that attack's verdicts
    (kept beside the cache) and runs only the next; the cell equals the uninterrupted one."""
    entry = leaderboard.Entry("none", str(cnn_run))  # the bare cnn: one cell per eps
    real = evaluation.evaluate
    specs_run = []

    protocol = dataclasses.replace(SMALL, eps=(0.1,))
    monkeypatch.setattr(evaluation, "evaluate", _killed_at_first_checkpoint(real))
    with pytest.raises(_Killed):
        leaderboard.evaluate_entry(entry, tmp_path, protocol, log=lambda line: None)
    partial = tmp_path / "cache" / "none" / "none-0.1.partial.npz"
    assert partial.is_file() and not (tmp_path / "cache" / "none" / "none-0.1.json").exists()

    def counted(*args, resume=None, **kwargs):
        specs_run.append(len(resume.results))
        return real(*args, resume=resume, **kwargs)
    monkeypatch.setattr(evaluation, "evaluate", counted)
    row = leaderboard.evaluate_entry(entry, tmp_path, protocol, log=lambda line: None)
    assert specs_run == [1] and not partial.exists()  # resumed with fgsm done; the partial state is gone
    monkeypatch.setattr(evaluation, "evaluate", real)
    leaderboard.evaluate_entry(entry, tmp_path / "whole", protocol, log=lambda line: None)
    whole = json.loads((tmp_path / "whole" / "cache" / "none" / "none-0.1.json").read_text())
    resumed = json.loads((tmp_path / "cache" / "none" / "none-0.1.json").read_text())
    assert resumed["robust"] == whole["robust"] and resumed["attacks"] == whole["attacks"]
    assert row["whitebox 0.1"]["accuracy"] == np.mean(whole["robust"])


def test_a_cell_s_attacks_run_in_chunks_and_a_killed_cell_resumes_inside_one(monkeypatch, cnn_run, tmp_path):
    """A cell's attacks run in chunks of about CHUNK_SECONDS (a latent search's attack can take hours): killed
    after its first chunk, the cell keeps it and resumes with the next chunk of the same attack."""
    from tfpurify.evaluation.report import load_state

    monkeypatch.setattr(leaderboard, "CHUNK_SECONDS", 1e-9)  # CHUNK_START images, then CHUNK_MIN at a time
    entry, protocol = leaderboard.Entry("none", str(cnn_run)), dataclasses.replace(SMALL, eps=(0.1,))
    real = evaluation.evaluate

    monkeypatch.setattr(evaluation, "evaluate", _killed_at_first_checkpoint(real))
    with pytest.raises(_Killed):
        leaderboard.evaluate_entry(entry, tmp_path, protocol, log=lambda line: None)
    partial = tmp_path / "cache" / "none" / "none-0.1.partial.npz"
    report = load_state(partial.read_bytes())[0]
    assert not report.results and report.progress_state["none"]["chunks"]["part"]["done"] == 4  # FGSM's first
    monkeypatch.setattr(evaluation, "evaluate", real)
    leaderboard.evaluate_entry(entry, tmp_path, protocol, log=lambda line: None)
    cell = json.loads((tmp_path / "cache" / "none" / "none-0.1.json").read_text())
    assert not partial.exists() and cell["n"] == 24 and len(cell["robust"]) == 24


def test_the_chunks_of_a_cell_killed_under_another_protocol_are_not_taken(monkeypatch, cnn_run, tmp_path):
    """A killed cell's chunk board belongs to its weights and protocol: measured again under another protocol
    (its partial report then discarded), the cell attacks its first chunk again instead of gathering it."""
    from tfpurify.evaluation import run as evaluation_run

    monkeypatch.setattr(leaderboard, "CHUNK_SECONDS", 1e-9)
    entry, protocol = leaderboard.Entry("none", str(cnn_run)), dataclasses.replace(SMALL, eps=(0.1,))
    monkeypatch.setattr(evaluation, "evaluate", _killed_at_first_checkpoint(evaluation.evaluate))
    with pytest.raises(_Killed):
        leaderboard.evaluate_entry(entry, tmp_path, protocol, log=lambda line: None)
    monkeypatch.undo()
    monkeypatch.setattr(leaderboard, "CHUNK_SECONDS", 1e-9)
    monkeypatch.setattr(leaderboard, "_serving_latency", lambda *a: None)
    attacked, real_attack = [], evaluation_run.attack_and_score
    monkeypatch.setattr(evaluation_run, "attack_and_score",
                        lambda name, f, g, x, *a, **k: attacked.append((name, np.asarray(x))) or real_attack(
                            name, f, g, x, *a, **k))
    leaderboard.evaluate_entry(entry, tmp_path, dataclasses.replace(protocol, score_draws=3), log=lambda line: None)
    first = data.load_dataset(protocol.dataset, "test", limit=4)[0]
    assert attacked[0][0] == "fgsm" and np.array_equal(attacked[0][1], first)  # FGSM's first chunk again


def test_a_zoo_entrys_unfinished_cell_resumes_in_another_checkout(monkeypatch, dae_run, cnn_run, tmp_path):
    """A zoo entry's unfinished cell is kept, as its finished cells, for its runs without their paths: killed
    after its first attack, then moved with its zoo (another checkout), it resumes with the next attack."""
    from tfpurify import zoo

    zoo.add("dae", str(dae_run), str(cnn_run), "cnn", tmp_path / "zoo", n=12)
    real, protocol = evaluation.evaluate, dataclasses.replace(SMALL, eps=(0.1,))
    monkeypatch.setattr(evaluation, "evaluate", _killed_at_first_checkpoint(real, "whitebox"))
    with pytest.raises(_Killed):
        leaderboard.evaluate_entry(leaderboard.entry_from_text("zoo:dae", tmp_path / "zoo"), tmp_path / "board",
                                   protocol, log=lambda line: None)
    shutil.copytree(tmp_path / "zoo", tmp_path / "moved" / "zoo")
    shutil.copytree(tmp_path / "board", tmp_path / "moved" / "board")
    shutil.rmtree(tmp_path / "zoo")  # nothing of the first checkout is left to be found by its path
    partial = tmp_path / "moved" / "board" / "cache" / "dae" / "whitebox-0.1.partial.npz"
    assert partial.is_file()
    resumed = []

    def counted(*args, resume=None, threat_model=None, **kwargs):
        resumed.append((threat_model, None if resume is None else len(resume.results)))
        return real(*args, resume=resume, threat_model=threat_model, **kwargs)
    monkeypatch.setattr(evaluation, "evaluate", counted)
    leaderboard.evaluate_entry(leaderboard.entry_from_text("zoo:dae", tmp_path / "moved" / "zoo"),
                               tmp_path / "moved" / "board", protocol, log=lambda line: None)
    assert resumed == [("whitebox", 1)] and not partial.exists()  # the gray-box cell was finished and kept


def test_the_sanity_checks_run_on_the_white_box_cells_a_bare_classifier_included(monkeypatch, cnn_run, tmp_path):
    asked = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: asked.append((k["threat_model"], k["sanity_checks"])) or real(*a, **k))
    checked = leaderboard.Protocol(**{**SMALL.to_dict(), "eps": (0.1,), "n": 12, "sanity_checks": True,
                                      "sanity_n": 12, "sanity_queries": 300, "attacks": ("fgsm",)})
    rows = leaderboard.run([leaderboard.Entry("none", str(cnn_run))], tmp_path, checked, log=lambda line: None)
    assert asked == [("none", True)]
    assert rows[0]["sanity"]["passed"] + len(rows[0]["sanity"]["failed"]) > 0
    cell = json.loads((tmp_path / "cache" / "none" / "none-0.1.json").read_text())  # one cell for both columns:
    assert rows[0]["sanity"]["passed"] == sum(c["status"] == "passed" for c in cell["sanity"])  # counted once
    table = [line for line in (tmp_path / "fashion_mnist.md").read_text().splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table  # no cell breaks the table's columns


def test_a_pilot_gives_an_entry_that_would_not_fit_the_largest_n_that_does(monkeypatch, dae_run, cnn_run, tmp_path):
    asked = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: asked.append(len(a[1])) or real(*a, **k))
    entry = leaderboard.Entry("dae", str(dae_run), str(cnn_run))
    tight = dataclasses.replace(SMALL, eps=(0.1,), minutes_per_entry=1e-4, min_n=10, pilot_n=6)
    said = []
    row = leaderboard.run([entry], tmp_path, tight, log=said.append)[0]
    assert row["n"] == 10 and asked == [6, 10, 10]  # the pilot on 6 images, then both cells on the minimum
    assert 0 < row["estimated_minutes"] and row["estimate_is_a_lower_bound"]
    assert any("the pilot stopped after" in line for line in said), said  # its first attack was long enough
    assert any("the protocol's minimum, 10 images, takes at least" in line for line in said), said  # not "fits"
    pilot = json.loads((tmp_path / "cache" / "dae" / "pilot.json").read_text())["value"]
    assert pilot["at_least"] and pilot["seconds_per_image"] > 0
    roomy = dataclasses.replace(tight, minutes_per_entry=1e6)  # the same cells measure, the pilot is kept
    assert leaderboard.run([entry], tmp_path, roomy, log=lambda line: None)[0]["n"] == 24 and asked[3:] == [24, 24]


def test_a_pilot_stops_once_its_time_puts_the_minimum_over_the_budget(monkeypatch, cnn_run, tmp_path):
    """The pilot stops at the first checkpoint past the seconds that put min_n images over the budget (even
    resumed with those seconds already spent: then no attack runs), and runs to its end below them."""
    entry = leaderboard.Entry("none", str(cnn_run))
    real, pilots = evaluation.evaluate, []

    def counted(*args, checkpoint=None, **kwargs):
        if len(args[1]) == 6:
            pilots.append([])
            kept = checkpoint

            def checkpoint(report):
                pilots[-1].append(len(report.results))
                kept(report)
        return real(*args, checkpoint=checkpoint, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", counted)
    # cells = 1 (a bare classifier) x 1 eps: the pilot stops past 60 * budget * 6 / 10 s
    budget = dataclasses.replace(SMALL, eps=(0.1,), attacks=("fgsm", "pgd"), min_n=10, pilot_n=6,
                                 minutes_per_entry=1e-4)
    row = leaderboard.evaluate_entry(entry, tmp_path, budget, log=lambda line: None)
    assert pilots == [[1]] and row["n"] == 10 and row["estimate_is_a_lower_bound"]  # stopped after FGSM
    pilots.clear()
    roomy = dataclasses.replace(budget, minutes_per_entry=1e6, n=12)
    row = leaderboard.evaluate_entry(entry, tmp_path / "roomy", roomy, log=lambda line: None)
    assert pilots == [[1, 2]] and row["n"] == 12 and "estimate_is_a_lower_bound" not in row  # to its end
    # a partial pilot whose seconds are already past: no attack runs, it is read as stopped
    tight = tmp_path / "tight"
    monkeypatch.setattr(leaderboard, "_POLL_SECONDS", 0)

    monkeypatch.setattr(evaluation, "evaluate", _killed_at_first_checkpoint(real))
    with pytest.raises(_Killed):
        leaderboard.evaluate_entry(entry, tight, roomy, log=lambda line: None)  # a pilot killed after FGSM
    pilots.clear()
    monkeypatch.setattr(evaluation, "evaluate", counted)
    said = []
    row = leaderboard.evaluate_entry(entry, tight, budget, log=said.append)
    assert pilots == [] and row["n"] == 10 and row["estimate_is_a_lower_bound"], said


def test_a_pilot_killed_after_an_attack_resumes_with_the_next_one(monkeypatch, cnn_run, tmp_path):
    """The pilot is kept per attack as a cell is: killed after its first attack, a rerun resumes it there."""
    entry = leaderboard.Entry("none", str(cnn_run))
    tight = dataclasses.replace(SMALL, eps=(0.1,), minutes_per_entry=1e6, n=10, pilot_n=6)  # it runs to its end
    real = evaluation.evaluate

    monkeypatch.setattr(evaluation, "evaluate", _killed_at_first_checkpoint(real))
    with pytest.raises(_Killed):
        leaderboard.evaluate_entry(entry, tmp_path, tight, log=lambda line: None)
    partial = tmp_path / "cache" / "none" / "pilot.partial.npz"
    assert partial.is_file() and not (tmp_path / "cache" / "none" / "pilot.json").exists()
    resumed = []

    def counted(*args, resume=None, **kwargs):
        resumed.append((len(args[1]), None if resume is None else len(resume.results)))
        return real(*args, resume=resume, **kwargs)
    monkeypatch.setattr(evaluation, "evaluate", counted)
    row = leaderboard.evaluate_entry(entry, tmp_path, tight, log=lambda line: None)
    assert resumed == [(6, 1), (10, None)] and not partial.exists()  # the pilot resumed, then the cell on 10
    assert row["n"] == 10 and (tmp_path / "cache" / "none" / "pilot.json").is_file()


def _measured_beside(other, entry, out, protocol, lines):
    """The entry's row measured while process `other` runs (it is stopped afterwards)."""
    try:
        return leaderboard.evaluate_entry(entry, out, protocol, log=lines.append)
    finally:
        other.kill()
        other.wait()


def _claim_by(process, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": process.pid, "boot": runs._boot_id()}))


def test_processes_share_an_entrys_cells_and_take_over_one_whose_process_is_gone(monkeypatch, cnn_run, tmp_path):
    """Two `tfpurify leaderboard` processes share an entry's cells: one that another running process claimed is
    left to it while this one measures the rest, then waited for; its result is taken as it lands, and a claim
    whose process is gone is taken over."""
    entry = leaderboard.Entry("none", str(cnn_run))
    real = leaderboard._evaluate_cell
    measured = []  # the eps of every cell this process measures
    monkeypatch.setattr(leaderboard, "_evaluate_cell", lambda *a, **k: measured.append(a[6]) or real(*a, **k))
    whole = leaderboard.evaluate_entry(entry, tmp_path / "whole", SMALL, log=lambda line: None)
    assert measured == [0.1, 0.2]

    other = subprocess.Popen(["sleep", "60"])  # the other process, which holds eps 0.1
    claimed = tmp_path / "shared" / "cache" / "none" / "none-0.1.claim"
    _claim_by(other, claimed)
    looks, lines = [], []

    def the_other_finishes(seconds):  # while this process waits, the other one lands its cell
        looks.append(list(measured))
        shutil.copy(tmp_path / "whole" / "cache" / "none" / "none-0.1.json", claimed.with_suffix(".json"))
    monkeypatch.setattr(leaderboard.time, "sleep", the_other_finishes)
    row = _measured_beside(other, entry, tmp_path / "shared", SMALL, lines)
    assert measured == [0.1, 0.2, 0.2]  # eps 0.2 here, eps 0.1 by the other process
    assert looks == [[0.1, 0.2, 0.2]]  # it waited once, after measuring what it could
    assert any("none at eps 0.1: measured by process" in line for line in lines)
    assert row["whitebox 0.1"] == whole["whitebox 0.1"] and row["whitebox 0.2"] == whole["whitebox 0.2"]
    assert claimed.exists()  # the other process's claim is its own to remove

    gone = tmp_path / "taken" / "cache" / "none" / "none-0.1.claim"
    _claim_by(other, gone)  # its process is gone now: the claim is stale
    monkeypatch.setattr(leaderboard.time, "sleep", lambda seconds: pytest.fail("waited for a process that is gone"))
    leaderboard.evaluate_entry(entry, tmp_path / "taken", SMALL, log=lambda line: None)
    assert measured == [0.1, 0.2, 0.2, 0.1, 0.2] and not gone.exists()


def test_a_claim_is_held_once_released_on_leaving_and_a_malformed_or_foreign_one_is_said(tmp_path):
    from tfpurify.runs import claim
    path = tmp_path / "cell.claim"
    with claim(path) as holder:
        assert holder is None and json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()
    path.write_text(json.dumps({"host": socket.gethostname()}))  # names no process: taken over
    with claim(path) as holder:
        assert holder is None
    path.write_text(json.dumps({"host": "another-machine", "pid": 1, "boot": "x"}))  # cannot be checked from here
    with claim(path) as holder:
        assert "another-machine" in holder and "delete it if that process is gone" in holder
    assert path.exists()


def test_the_training_column_states_cpu_minutes_else_wall_minutes_and_images():
    assert leaderboard._training({"cpu_minutes": 41.5, "wall_minutes": 50, "images_seen": 540000}) == \
        "41.5 CPU-min, 540,000 images"
    assert leaderboard._training({"wall_minutes": 97.2}) == "97.2 wall-min"  # a run timed by the clock only
    assert leaderboard._training({"epochs_planned": 3}) == "-" and leaderboard._training(None) == "-"


def test_a_zoo_entry_brings_its_paper_its_budget_and_its_n(dae_run, cnn_run, tmp_path, monkeypatch):
    from tfpurify import zoo

    details = {"paper": {"title": "a denoising autoencoder", "number": "80.0 %", "threat_model": "gray-box PGD"},
               "training": {"cpu_minutes": 2, "images_seen": 120000}, "leaderboard": {"n": 16}}
    zoo.add("dae", str(dae_run), str(cnn_run), "cnn", tmp_path / "zoo", n=16, details=details)
    entry = leaderboard.entry_from_text("zoo:dae", tmp_path / "zoo")
    assert (entry.n, entry.run) == (16, str(tmp_path / "zoo" / "dae" / "run"))
    row = leaderboard.run([entry], tmp_path / "board", dataclasses.replace(SMALL, eps=(0.1,)), log=lambda line: None,
                          record=True)[0]
    assert row["n"] == 16 and row["paper"]["number"] == "80.0 %"
    markdown = (tmp_path / "board" / "fashion_mnist.md").read_text()
    assert "| 80.0 % (gray-box PGD) |" in markdown and "| 2 CPU-min, 120,000 images |" in markdown
    recorded = zoo.read_manifest("dae", tmp_path / "zoo")["leaderboard"]  # --record: the row in the manifest
    assert (recorded["n"], recorded["rank"], recorded["protocol"]["eps"]) == (16, 1, [0.1])
    assert recorded["table"] == "board/fashion_mnist.md"  # beside the zoo: no path of the measuring machine
    assert recorded["whitebox 0.1"]["accuracy"] == row["whitebox 0.1"]["accuracy"]
    assert recorded["clean"] == row["clean"] and not zoo.check_files("dae", tmp_path / "zoo")
    assert leaderboard.entry_from_text("zoo:dae", tmp_path / "zoo").n == 16
    # the zoo and its board elsewhere (another checkout): the cached cells are its cells, nothing is measured again
    shutil.copytree(tmp_path / "zoo", tmp_path / "moved" / "zoo")
    shutil.copytree(tmp_path / "board", tmp_path / "moved" / "board")
    with monkeypatch.context() as patched:
        patched.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("a cached cell was measured again"))
        patched.setattr(leaderboard, "_serving_latency", lambda *a: pytest.fail("serving was measured again"))
        moved = leaderboard.run([leaderboard.entry_from_text("zoo:dae", tmp_path / "moved" / "zoo")],
                                tmp_path / "moved" / "board", dataclasses.replace(SMALL, eps=(0.1,)),
                                log=lambda line: None)[0]
    assert moved["whitebox 0.1"] == row["whitebox 0.1"]
    # --entries: the other rows of the table are kept, and the rank a kept zoo row recorded follows the table
    zoo.add("bare", str(cnn_run), None, "cnn", tmp_path / "zoo", n=16)
    small, quiet = dataclasses.replace(SMALL, eps=(0.1,)), (lambda line: None)
    leaderboard.run([leaderboard.entry_from_text("zoo:bare", tmp_path / "zoo")], tmp_path / "board2", small,
                    log=quiet, record=True)
    assert zoo.read_manifest("bare", tmp_path / "zoo")["leaderboard"]["rank"] == 1  # alone in its table
    rows = leaderboard.run([entry], tmp_path / "board2", small, log=quiet, record=True, keep_others=True)
    assert [r["entry"] for r in rows] == ["dae", "bare"]  # PGD breaks the bare cnn more than the purified one
    assert [zoo.read_manifest(n, tmp_path / "zoo")["leaderboard"]["rank"] for n in ("dae", "bare")] == [1, 2]


def test_the_command_line(board, monkeypatch, cnn_run, dae_run, tmp_path):
    monkeypatch.setattr(leaderboard, "PROTOCOL", SMALL)
    runner = CliRunner()
    result = runner.invoke(cli, ["leaderboard", "--entries", f"none={cnn_run}", "--out", str(tmp_path), "--limit", "16"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1. none: white-box 0.1 ") and "(n 16)" in result.stdout
    for args, match in ((["--entries", "nothing"], "expected zoo:NAME or NAME=RUN"),
                        (["--entries", f"a={cnn_run},a={cnn_run}"], "entry names must differ"),
                        (["--zoo", str(tmp_path / "empty")], "the zoo is empty"),
                        (["--entries", "zoo:missing", "--zoo", str(tmp_path)], "no zoo entry 'missing'"),
                        (["--limit", "0"], "--limit must be")):
        bad = runner.invoke(cli, ["leaderboard", "--out", str(tmp_path), *args])
        assert bad.exit_code == 1 and "Traceback" not in bad.output, bad.output
        lines = [line for line in bad.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and match in lines[0], lines
    with pytest.raises(InputValidationError):
        leaderboard.entry_from_text("=runs/x")


def test_evaluating_some_entries_keeps_the_other_rows_of_the_same_protocol(board, tmp_path):
    """`--entries` adds or updates those rows and keeps the table's others (same protocol only); the default,
    every zoo entry, writes exactly the entries it evaluated."""
    out, entries, _ = board
    target = tmp_path / "board"
    shutil.copytree(out, target)
    leaderboard.run(entries, target, SMALL, log=lambda line: None)  # both rows, whatever earlier tests left in out
    dae = next(r for r in json.loads((target / "fashion_mnist.json").read_text())["rows"] if r["entry"] == "dae")
    again = leaderboard.run(entries[:1], target, SMALL, log=lambda line: None, keep_others=True)
    assert sorted(r["entry"] for r in again) == ["dae", "none"]
    assert next(r for r in again if r["entry"] == "dae") == dae  # as the table held it
    written = json.loads((target / "fashion_mnist.json").read_text())
    assert sorted(r["entry"] for r in written["rows"]) == ["dae", "none"]
    assert (target / "fashion_mnist.md").read_text().count("\n| ") == 1 + 2
    assert [r["entry"] for r in leaderboard.run(entries[:1], target, SMALL, log=lambda line: None)] == ["none"]
    leaderboard.run(entries, target, SMALL, log=lambda line: None)
    other = leaderboard.Protocol(**{**SMALL.to_dict(), "eps": (0.1,), "n": 16})
    assert leaderboard.kept_rows(target, other, {"none"}) == []  # another protocol: nothing kept
    assert [r["entry"] for r in leaderboard.kept_rows(target, SMALL, {"none"})] == ["dae"]
    # a table written before a protocol field existed is the protocol's where the field keeps what was done before
    table = json.loads((target / "fashion_mnist.json").read_text())
    before = dict(SMALL.to_dict(), sanity_queries=5000, purifier_attacks=[])
    table["protocol"] = {k: v for k, v in jsonable(before).items() if k != "purifier_attacks"}
    (target / "fashion_mnist.json").write_text(json.dumps(table))
    assert leaderboard.kept_rows(target, SMALL, {"none"}) == []  # SMALL's purifier attacks were not done then
    assert [r["entry"] for r in leaderboard.kept_rows(
        target, leaderboard.Protocol(**before), {"none"})] == ["dae"]


def test_the_papers_column_says_where_an_entry_deviates_from_its_paper():
    row = {"paper": {"number": "76.9 %", "threat_model": "gray-box PGD 0.1"}}
    assert leaderboard._paper_cell(row) == "76.9 % (gray-box PGD 0.1)"
    row["deviation"] = "the AE term on the last 1 % of the steps; measured: gray-box 58.4 % vs 40.3 %"
    assert leaderboard._paper_cell(row) == ("76.9 % (gray-box PGD 0.1); this entry deviates: the AE term on the "
                                            "last 1 % of the steps")
    assert leaderboard._paper_cell({"deviation": "wider"}) == "-; this entry deviates: wider"


def test_a_waiting_process_helps_with_the_chunks_of_a_held_cell_and_the_holder_gathers_them(
        monkeypatch, cnn_run, tmp_path):
    """A process left with a cell another running process holds attacks the chunks no one holds, through the
    cell's chunk board; the holder (here: this process, once the other is gone) gathers them without attacking
    again, and the cell equals one measured by a single process."""
    from tfpurify.evaluation import run as evaluation_run

    monkeypatch.setattr(leaderboard, "CHUNK_SECONDS", 1e-9)  # CHUNK_START images, then CHUNK_MIN at a time
    monkeypatch.setattr(leaderboard, "_serving_latency", lambda *a: None)  # not what this test is about
    entry, protocol = leaderboard.Entry("none", str(cnn_run)), dataclasses.replace(SMALL, eps=(0.1,))
    whole = leaderboard.evaluate_entry(entry, tmp_path / "whole", protocol, log=lambda line: None)
    attacked = []  # (phase, images) of every attack on a chunk
    real_attack = evaluation_run.attack_and_score
    monkeypatch.setattr(evaluation_run, "attack_and_score",
                        lambda name, f, g, x, *a, **k: attacked.append((phase[0], len(x))) or real_attack(
                            name, f, g, x, *a, **k))
    other = subprocess.Popen(["sleep", "60"])
    claimed = tmp_path / "shared" / "cache" / "none" / "none-0.1.claim"
    _claim_by(other, claimed)
    phase, lines = ["helping"], []

    def the_other_is_gone(seconds):
        other.kill()
        other.wait()
        phase[0] = "holding"
    monkeypatch.setattr(leaderboard.time, "sleep", the_other_is_gone)
    row = _measured_beside(other, entry, tmp_path / "shared", protocol, lines)
    helped = [n for p, n in attacked if p == "helping"]
    assert sum(helped) >= 24 and phase == ["holding"]  # FGSM's chunks at least, attacked while the other held
    assert any("helps it with the chunks of its attacks" in line for line in lines)
    assert not [n for p, n in attacked if p == "holding" and n > 0]  # gathered, not attacked again
    assert row["whitebox 0.1"] == whole["whitebox 0.1"]
    assert not (tmp_path / "shared" / "cache" / "none" / "none-0.1.chunks").exists()  # the board goes with the cell
