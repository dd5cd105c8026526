"""The `tfpurify` command: a thin click layer over the library.

Library errors (`tfpurify.errors.TfpurifyError`) become one line on stderr and exit status 1;
anything else is a bug and keeps its traceback.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the CLI

import click  # noqa: E402

from tfpurify import registry  # noqa: E402
from tfpurify.errors import TfpurifyError  # noqa: E402

try:  # the commands' options come from the registries: built-ins and installed plug-ins
    registry.load()
except TfpurifyError as e:  # a broken plug-in: one line, as for every library error
    click.echo(f"Error: {e}", err=True)
    raise SystemExit(1) from None

from cli.data import data  # noqa: E402
from cli.eval import eval_command  # noqa: E402
from cli.export import export_command  # noqa: E402
from cli.leaderboard import leaderboard_command  # noqa: E402
from cli.predict import predict_command  # noqa: E402
from cli.train import train  # noqa: E402
from cli.tune import tune_command  # noqa: E402
from cli.zoo import zoo  # noqa: E402


def _quiet_python_logs():
    """TensorFlow/absl warnings (retracing, deprecated cleverhans arguments) are not for CLI users."""
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


class _OneLineErrors(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TfpurifyError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfpurify")
def cli():
    """tfpurify: train, evaluate, tune and export defenses against adversarial examples.

    Fashion-MNIST is the default data set. Every robustness number is printed with its threat model.
    """
    _quiet_python_logs()


cli.add_command(data)
cli.add_command(train)
cli.add_command(eval_command)
cli.add_command(tune_command)
cli.add_command(zoo)
cli.add_command(leaderboard_command)
cli.add_command(export_command)
cli.add_command(predict_command)

if __name__ == "__main__":
    cli()
