"""`tfpurify export RUN`: one SavedModel (purifier + classifier [+ detector]) for TF Serving."""

import json
import pathlib

import click


@click.command("export")
@click.argument("run")
@click.option("--classifier", "classifier_run", default=None,
              help="Classifier run the defense RUN protects (needed when RUN is a defense).")
@click.option("--name", required=True, help="Model name: saved_models/NAME/VERSION.")
@click.option("--version", "version", default=1, show_default=True, type=int)
@click.option("--out", default="saved_models", show_default=True, help="Export root folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing version.")
def export_command(run, classifier_run, name, version, out, overwrite):
    """Export RUN as saved_models/NAME/VERSION with `serving_default` and `purify` signatures."""
    from tfpurify.data import dataset_info
    from tfpurify.errors import RunFolderError
    from tfpurify.export import export_saved_model, validate_name
    from tfpurify.training import load_defended

    validate_name(name)
    defended, info = load_defended(run, classifier_run)
    input_shape = dataset_info(info["dataset"]).input_shape
    report = pathlib.Path(run) / "report.json"
    try:
        summary = json.loads(report.read_text())["rows"] if report.is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"{report}: unreadable evaluation report ({e}); re-run tfpurify eval or delete it") from None
    path = export_saved_model(defended, out, name, version, input_shape, overwrite=overwrite,
                              metadata={**info, "evaluation_summary": summary})
    click.echo(f"exported {info['defense']} + {info['classifier']} -> {path}")
