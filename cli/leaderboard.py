"""`tfpurify leaderboard`: every entry under one fixed protocol, in one table."""

import click

from cli.options import COUNT


@click.command("leaderboard")
@click.option("--entries", default=None,
              help="Comma list of zoo:NAME or NAME=RUN[:CLASSIFIER_RUN] [default: every zoo entry]; the table "
                   "in --out keeps its other entries' rows where it was made under the same protocol.")
@click.option("--zoo", "zoo_path", default=None, help="The zoo folder [default: $TFPURIFY_ZOO, else zoo/].")
@click.option("--out", default="leaderboard", show_default=True,
              help="Folder of the tables (DATASET.json, .md, .html) and the cache of finished cells.")
@click.option("--limit", "n", default=None, type=COUNT,
              help="The first N test images per entry instead of the protocol's 1000 (at least 200 for a row that "
                   "counts; the tables say n).")
@click.option("--record", is_flag=True,
              help="Write every zoo entry's row into its manifest (the n it holds is then the entry's n).")
def leaderboard_command(entries, zoo_path, out, n, record):
    """Evaluate every entry under the leaderboard's protocol (eps 0.1 and 0.2, gray-box and white-box, FGSM,
    PGD-100 x 2, AutoAttack, sanity checks) and write the tables; a rerun evaluates only missing cells (a
    stopped one resumes with its next chunk of images, about 10 minutes each), and processes started on one
    --out (one per core) share them."""
    import dataclasses

    from cli.options import parse_list
    from tfpurify import leaderboard
    from tfpurify.errors import InputValidationError

    chosen = ([leaderboard.entry_from_text(t, zoo_path) for t in parse_list(entries, "--entries")] if entries
              else leaderboard.all_zoo_entries(zoo_path))
    if not chosen:
        raise InputValidationError("no entries: the zoo is empty; name run folders with --entries NAME=RUN:CLASSIFIER")
    if n is not None:
        chosen = [dataclasses.replace(e, n=n) for e in chosen]
    rows = leaderboard.run(chosen, out, progress=True, log=lambda line: click.echo(line, err=True), record=record,
                           keep_others=bool(entries))
    for i, row in enumerate(rows, 1):
        first = next(k for k in row if k.startswith("whitebox "))
        click.echo(f"{i}. {row['entry']}: white-box {first.split()[1]} {100 * row[first]['accuracy']:.1f} %, "
                   f"clean {100 * row['clean']['accuracy']:.1f} % (n {row['n']})")
    click.echo(f"written: {out}/")
