"""`tfpurify train ...`: reference classifiers, and every registered defense (one command each)."""

import dataclasses
import pathlib

import click

from cli.options import COUNT, FRACTION, POSITIVE, dataset_option, limit_option, option_type, registries, seed_option
from tfpurify.metrics import human_metrics


@click.group()
def train():
    """Train a reference classifier or a defense into a run folder."""


@train.command("classifier")
@click.option("--arch", default="cnn", show_default=True, help="cnn, lenet5, mlp or resnet20.")
@dataset_option
@click.option("--epochs", default=3, show_default=True, type=COUNT)
@click.option("--batch-size", default=128, show_default=True, type=COUNT)
@click.option("--learning-rate", default=1e-3, show_default=True, type=POSITIVE)
@click.option("--val-fraction", default=0.1, show_default=True, type=FRACTION,
              help="Share of the training split held out for validation (early stopping).")
@click.option("--patience", default=3, show_default=True, type=COUNT,
              help="Epochs without a lower validation loss before training stops (the best weights kept).")
@limit_option
@seed_option
@click.option("--out", required=True, help="Run folder to write; an unfinished run there resumes.")
def classifier(arch, dataset, epochs, batch_size, learning_rate, val_fraction, patience, limit, seed, out):
    """Train a reference classifier (returns logits) with Keras fit."""
    from tfpurify.classifiers import ClassifierConfig, train_classifier

    config = ClassifierConfig(arch=arch, dataset=dataset, epochs=epochs, batch_size=batch_size,
                              learning_rate=learning_rate, val_fraction=val_fraction, patience=patience,
                              limit=limit, seed=seed)
    if _already_trained(out, "classifier.weights.h5", config.to_dict()):
        return
    _, history = train_classifier(config, out, verbose=2)
    click.echo(f"trained {arch} on {dataset}: {human_metrics({k: v[-1] for k, v in history.items()})} -> {out}")


def _defense_command(name, model_class, config_class):
    """One `tfpurify train <name>` command whose options are the config dataclass's fields."""
    from tfpurify.defenses import Detector

    def command(out, strategy, config_file=None, target_fpr=0.05, **fields):
        from tfpurify.training import config_dict, train_defense

        given = {k: v for k, v in fields.items() if v is not None and v != ()}
        from_file = _read_config_file(config_file, name)
        config = config_class.from_dict({**from_file, **given})
        if config_file is not None:
            _say_what_was_taken(config_file, config_class, from_file, given)
        if _already_trained(out, "defense.weights.h5", config_dict(name, config)):
            return
        _, history = train_defense(name, config, out, strategy=strategy, verbose=2, target_fpr=target_fpr)
        click.echo(f"trained {name} on {config.dataset}: {human_metrics({k: v[-1] for k, v in history.items()})} "
                   f"-> {out}")

    for field in reversed(dataclasses.fields(config_class)):
        several = isinstance(field.default, tuple)  # e.g. aaa's classifier runs: repeat the option
        command = click.option(f"--{field.name.replace('_', '-')}", field.name, type=str if several else option_type(field),
                               multiple=several, default=None,
                               help=(f"repeatable [default: {', '.join(map(str, field.default)) or 'none'}]"
                                     if several else f"[default: {field.default}]"))(command)
    if issubclass(model_class, Detector):
        command = click.option("--target-fpr", default=0.05, show_default=True, type=FRACTION,
                               help="The detector's threshold flags this fraction of clean validation "
                                    "images (calibrated when training ends).")(command)
    command = click.option("--config", "config_file", default=None,
                           help="A config.json (a run's, or `tfpurify tune`'s best/config.json) to start from; "
                                "options given here override its fields.")(command)
    command = click.option("--strategy", default="default", show_default=True,
                           help="default, mirrored (all local devices) or multiworker (reads TF_CONFIG).")(command)
    command = click.option("--out", required=True, help="Run folder; an unfinished run there resumes.")(command)
    doc = (config_class.__doc__ or "").strip().splitlines()[0]
    return click.command(name, help=f"Train the {name} defense. {doc}")(command)


def _already_trained(out, weights_name, config_dict):
    """True (and says so) where `out` holds a finished run of this config; says it resumes an unfinished one;
    a finished run of another config is an error (never overwritten)."""
    from tfpurify.errors import RunFolderError
    from tfpurify.runs import holds_config, run_state

    state = run_state(out, weights_name)
    if state == "unfinished":
        click.echo(f"resuming the unfinished run in {out} from its last finished epoch")
    if state != "finished":
        return False
    if not holds_config(out, config_dict):
        raise RunFolderError(f"{out} holds a finished run of another config; use another --out (or delete it)")
    click.echo(f"{out} is already trained with this config: nothing to do (delete it, or use another --out, to "
               "train again)")
    return True


def _say_what_was_taken(path, config_class, from_file, given):
    """One line: the fields `path` set away from the defaults, and those the options overrode."""
    defaults = dataclasses.asdict(config_class())
    taken = {k: v for k, v in from_file.items() if k in defaults and k not in given and v != defaults[k]
             and not (isinstance(v, list) and tuple(v) == defaults[k])}
    line = f"from {path}: " + (", ".join(f"{k}={v}" for k, v in taken.items()) or "the defaults")
    if given:
        line += "; given here: " + ", ".join(f"{k}={v}" for k, v in given.items())
    click.echo(line)


def _read_config_file(path, name):
    """The config fields of a run-folder config.json for defense `name` ({} without a path)."""
    if path is None:
        return {}
    from tfpurify.errors import InputValidationError
    from tfpurify.runs import read_config

    folder = pathlib.Path(path)
    cfg = read_config(folder.parent if folder.suffix == ".json" else folder)
    if cfg.get("defense") != name:
        raise InputValidationError(f"{path} configures {cfg.get('defense') or cfg.get('kind')!r}, not {name}")
    return cfg


def add_defense_commands():
    for name, (model_class, config_class) in sorted(registries()[0].items()):
        train.add_command(_defense_command(name, model_class, config_class))


add_defense_commands()
