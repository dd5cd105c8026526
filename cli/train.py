"""`tfpurify train ...`: train reference classifiers (and, through the registry, defenses)."""

import click

from cli.options import dataset_option, limit_option, seed_option


@click.group()
def train():
    """Train a reference classifier or a defense into a run folder."""


@train.command("classifier")
@click.option("--arch", default="cnn", show_default=True, help="cnn, lenet5, mlp or resnet20.")
@dataset_option
@click.option("--epochs", default=3, show_default=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--learning-rate", default=1e-3, show_default=True, type=float)
@limit_option
@seed_option
@click.option("--out", required=True, help="Run folder to write; an unfinished run there resumes.")
def classifier(arch, dataset, epochs, batch_size, learning_rate, limit, seed, out):
    """Train a reference classifier (returns logits) with Keras fit."""
    from tfpurify.classifiers import ClassifierConfig, train_classifier

    config = ClassifierConfig(arch=arch, dataset=dataset, epochs=epochs, batch_size=batch_size,
                              learning_rate=learning_rate, limit=limit, seed=seed)
    _, history = train_classifier(config, out, verbose=2)
    click.echo(f"trained {arch} on {dataset}: val_accuracy {history['val_accuracy'][-1]:.4f} -> {out}")
