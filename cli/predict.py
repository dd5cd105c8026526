"""`tfpurify predict SAVED_MODEL`: classify test images through an exported SavedModel."""

import click

from cli.options import limit_option


@click.command("predict")
@click.argument("saved_model")
@click.option("--dataset", default=None, help="Data set of the test images [default: the export's own].")
@limit_option
def predict_command(saved_model, dataset, limit):
    """Load SAVED_MODEL (as TF Serving would) and classify the first --limit test images through it."""
    from tfpurify.export import predict_saved_model

    for line in predict_saved_model(saved_model, dataset, limit or 8):
        click.echo(line)
