"""`tfpurify zoo ...`: the pretrained entries, their re-verification, export and making."""

import click

from cli.options import COUNT, FRACTION, runtime_options, runtime_overrides

zoo_option = click.option("--zoo", "zoo_path", default=None,
                          help="The zoo folder [default: $TFPURIFY_ZOO, else the project's zoo/].")


@click.group()
def zoo():
    """Pretrained entries: list, verify (hashes + clean accuracy), export; `zoo:ENTRY` works as a RUN in eval
    and export."""


@zoo.command("list")
@zoo_option
def list_command(zoo_path):
    """One line per entry: name, defense + classifier, data set, clean accuracy (n), training budget, its rank on
    the leaderboard it recorded (or that it has no row yet), what it changed from its paper."""
    from tfpurify.zoo import deviation_summary, entries, zoo_dir

    found = entries(zoo_path)
    if not found:
        click.echo(f"no entries in {zoo_dir(zoo_path)}")
    for m in found:
        clean = m["clean_accuracy"]
        budget = (m.get("training") or {}).get("cpu_minutes")
        click.echo(f"{m['name']}: {m['defense']} + {m['classifier']} on {m['dataset']}, clean "
                   f"{100 * clean['accuracy']:.1f} % (first {clean['n']} test images)"
                   + (f", trained {budget:g} CPU-minutes" if budget is not None else "")
                   + (f", leaderboard rank {m['leaderboard']['rank']}" if (m.get("leaderboard") or {}).get("rank")
                      else ", no leaderboard row yet")
                   + (f"; deviates from its paper: {deviation_summary(m['deviation'])}" if m.get("deviation") else ""))


@zoo.command("verify")
@click.argument("name")
@zoo_option
@click.option("--tolerance", default=0.01, show_default=True, type=FRACTION,
              help="Largest allowed gap to the manifest's clean accuracy (0.01: one point).")
def verify_command(name, zoo_path, tolerance):
    """Check NAME's files against their SHA-256, then its clean accuracy against the manifest's; exit 1 if
    either fails."""
    from tfpurify.zoo import verify

    result = verify(name, zoo_path, tolerance=tolerance)
    verdict = "OK" if result.passed else "FAILED"
    click.echo(f"{name}: {result.files} files match their SHA-256; clean accuracy {100 * result.clean_accuracy:.1f} % "
               f"on {result.n} test images, manifest {100 * result.expected:.1f} % "
               f"(tolerance {100 * tolerance:g} points): {verdict}")
    if not result.passed:
        raise SystemExit(1)


@zoo.command("export")
@click.argument("name")
@zoo_option
@click.option("--version", "version", default=1, show_default=True, type=COUNT)
@click.option("--out", default="saved_models", show_default=True, help="Export root folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing version (atomically).")
def export_command(name, zoo_path, version, out, overwrite):
    """Export entry NAME as OUT/NAME/VERSION, the SavedModel `tfpurify export` makes."""
    from cli.export import export_run
    from tfpurify.zoo import resolve

    run, classifier_run, overrides = resolve(name, root=zoo_path)
    export_run(run, classifier_run, name, version, out, overwrite, overrides)


@zoo.command("add")
@click.argument("name")
@click.option("--run", "run", required=True, help="The run folder of the entry (a defense, or a classifier).")
@click.option("--classifier", "classifier_run", default=None, help="The classifier run the defense protects.")
@click.option("--classifier-name", default=None,
              help="Its name under classifiers/ [default: its folder's name]; entries share one stored copy.")
@zoo_option
@click.option("--limit", "n", default=200, show_default=True, type=COUNT,
              help="Test images the manifest's clean accuracy is measured on (what `verify` checks).")
@click.option("--half", is_flag=True,
              help="Store the weights as float16 (half the size; the manifest's numbers are measured on them).")
@click.option("--details", default=None,
              help="A JSON file of further manifest fields: paper, citation, license, training budget, leaderboard row.")
@runtime_options
def add_command(name, run, classifier_run, classifier_name, zoo_path, n, half, details, **runtime):
    """Make entry NAME from run folders: copy them, measure the clean accuracy, write the manifest (SHA-256 of
    every file). The runtime options given are the entry's (eval and export of zoo:NAME use them)."""
    import json
    import pathlib

    from tfpurify.errors import InputValidationError
    from tfpurify.zoo import add

    extra = None
    if details is not None:
        try:
            extra = json.loads(pathlib.Path(details).read_text())
        except (OSError, ValueError) as e:
            raise InputValidationError(f"--details {details}: unreadable ({e})") from None
        if not isinstance(extra, dict):
            raise InputValidationError(f"--details {details}: a JSON object expected")
    manifest = add(name, run, classifier_run, classifier_name, zoo_path, runtime_overrides(runtime), n, extra, half)
    click.echo(f"{name}: {manifest['defense']} + {manifest['classifier']}, clean "
               f"{100 * manifest['clean_accuracy']['accuracy']:.1f} % on {manifest['clean_accuracy']['n']} test "
               f"images, {len(manifest['files'])} files hashed")
