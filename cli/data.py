"""`tfpurify data ...`: look at the data sets."""

import click

from cli.options import limit_option


@click.group()
def data():
    """Inspect the data sets."""


@data.command("info")
@click.argument("name", default="fashion_mnist")
@limit_option
def info(name, limit):
    """Load NAME's train and test splits and print shapes, ranges and class counts."""
    import numpy as np

    from tfpurify.data import dataset_info, load_dataset

    meta = dataset_info(name)
    click.echo(f"{meta.name}: input {meta.input_shape}, {meta.num_classes} classes")
    for split in ("train", "test"):
        x, y = load_dataset(name, split, limit=limit)
        counts = np.bincount(y, minlength=meta.num_classes)
        click.echo(f"  {split}: x {x.shape} {x.dtype} in [{x.min():.1f}, {x.max():.1f}], "
                   f"y {y.shape} {y.dtype}, per class {counts.min()}-{counts.max()}")
