"""`tfpurify export RUN`: one SavedModel (purifier + classifier [+ detector]) for TF Serving."""

import click

from cli.options import COUNT, runtime_options, runtime_overrides


@click.command("export")
@click.argument("run")
@click.option("--classifier", "classifier_run", default=None,
              help="Classifier run the defense RUN protects (needed when RUN is a defense).")
@click.option("--name", required=True, help="Model name: saved_models/NAME/VERSION.")
@click.option("--version", "version", default=1, show_default=True, type=COUNT)
@click.option("--out", default="saved_models", show_default=True, help="Export root folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing version (atomically).")
@runtime_options
def export_command(run, classifier_run, name, version, out, overwrite, **runtime):
    """Export RUN (a run folder or zoo:ENTRY) as saved_models/NAME/VERSION with `serving_default` and `purify`
    signatures.

    RUN's report.json joins the metadata only if it was made for these exact weights.
    """
    export_run(run, classifier_run, name, version, out, overwrite, runtime_overrides(runtime))


def export_run(run, classifier_run, name, version, out, overwrite, overrides):
    from tfpurify.data import dataset_info
    from tfpurify.export import evaluation_summary, export_saved_model, validate_name
    from tfpurify.training import load_defended
    from tfpurify.zoo import is_reference, resolve

    validate_name(name)
    if is_reference(run):
        run, classifier_run, overrides = resolve(run, classifier_run, overrides)
    defended, info = load_defended(run, classifier_run, overrides)
    summary, note = evaluation_summary(run, info["runs"])
    if note:
        click.echo(note)
    path = export_saved_model(defended, out, name, version, dataset_info(info["dataset"]).input_shape,
                              overwrite=overwrite, metadata={**info, "evaluation_summary": summary})
    click.echo(f"exported {info['defense']} + {info['classifier']} -> {path}")
