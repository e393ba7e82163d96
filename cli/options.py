"""The options the commands share: dataset and training options, one per method hyperparameter, their types.

Building them imports no Keras: a command's `--help` answers at once, and its backend is chosen before Keras loads.
"""

from __future__ import annotations

import dataclasses

import click

from stkd_keras import backend_selection


class ModelName(click.ParamType):
    """A model: a zoo or keras.applications name, a .keras file, or module:function (`stkd_keras.architectures`)."""

    name = "model"

    def convert(self, value, param, ctx):
        from stkd_keras import architectures  # Keras-free: a wrong name answers without loading a backend

        try:
            architectures.kind_of(value)
        except architectures.ArchitectureError as error:
            self.fail(str(error), param, ctx)
        return value


def model_options(flag: str, weights_flag: str, default: str, role: str):
    """The options naming a model (`ModelName`) and the weights it starts from."""
    architecture = click.option(
        flag,
        default=default,
        show_default=True,
        type=ModelName(),
        help=f"{role} architecture: a zoo or keras.applications name (`stkd-keras models`), a .keras file, or "
        "module:function.",
    )
    weights = click.option(
        weights_flag,
        default=None,
        help="Start from these weights: a .weights.h5 / .h5 file (e.g. ImageNet weights downloaded elsewhere), or "
        "imagenet (looked for in ~/.keras/models, never downloaded); the classifier is rebuilt.",
    )
    return lambda function: architecture(weights(function))


def _dataset_names():
    from stkd_keras import data  # Keras-free: a wrong name answers without loading a backend

    return data.list_datasets()


class DatasetName(click.ParamType):
    """A dataset name, or `folder:PATH`."""

    name = "dataset"

    def convert(self, value, param, ctx):
        names = _dataset_names()
        if value in names or value.startswith("folder:") and len(value) > len("folder:"):
            return value
        self.fail(f"{value!r} is not one of: {', '.join(names)}.", param, ctx)


class CountOrAll(click.ParamType):
    """A positive count, or `all`."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value == "all" or isinstance(value, int) and value >= 1:
            return value
        try:
            count = int(value)
        except (TypeError, ValueError):
            count = 0
        if count < 1:
            self.fail(f"expected a positive number of images or 'all', got {value!r}.", param, ctx)
        return count


def method_names():
    """The registered distillation methods' names."""
    from stkd_keras.methods import list_methods

    return list(list_methods())


# Which images a command reads.
_DATA_OPTIONS = (
    click.option(
        "--dataset",
        default="fashion_mnist",
        show_default=True,
        type=DatasetName(),
        help="Dataset name, or folder:PATH for your own images (`stkd-keras datasets` lists them).",
    ),
    click.option(
        "--data-dir",
        default=None,
        type=click.Path(file_okay=False),
        help="fashion_mnist: folder with the four IDX files (default: Debian's /usr/share/datasets/fashion-mnist). "
        "cinic10, tiny_imagenet: folder with the official archive or its extracted folder. Others: TFDS data dir.",
    ),
    click.option(
        "--download/--no-download", default=True, show_default=True, help="Let tfds download a missing dataset."
    ),
)


def data_options(function):
    """--dataset, --data-dir and --download/--no-download."""
    for option in reversed(_DATA_OPTIONS):
        function = option(function)
    return function


def _int_list(value, param):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}.", param=param) from None


# What a run trains and how (shared by train-teacher and distill).
_TRAINING_OPTIONS = (
    click.option(
        "--image-size",
        default=None,
        type=click.IntRange(min=1),
        help="Resize every image to this square size (default: the dataset's own; folder: datasets 32).",
    ),
    click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1), help="Training epochs."),
    click.option(
        "--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Training batch size."
    ),
    click.option(
        "--learning-rate",
        default=0.05,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help="Initial SGD learning rate (cosine-decayed to 0).",
    ),
    click.option(
        "--momentum",
        default=0.9,
        show_default=True,
        type=click.FloatRange(0, 1, max_open=True),
        help="SGD momentum.",
    ),
    click.option(
        "--weight-decay",
        default=5e-4,
        show_default=True,
        type=click.FloatRange(min=0),
        help="Decoupled weight decay.",
    ),
    click.option(
        "--seed",
        default=0,
        show_default=True,
        type=int,
        help="Seed of initialisation, shuffling, augmentation and mixup.",
    ),
    click.option(
        "--train-subset",
        default=None,
        type=click.IntRange(min=1),
        help="Train on a fixed subset of N training images.",
    ),
    click.option(
        "--val-subset",
        default=None,
        type=click.IntRange(min=1),
        help="Validate on the first N test (or held-out) images.",
    ),
    click.option(
        "--validation-holdout",
        default=None,
        type=click.IntRange(min=1),
        help="Validate on N training images set apart (never trained on; the last N of the training split's fixed "
        "shuffle) "
        "instead of the test split, to choose settings without reading it. A given --teacher may have trained on "
        "them.",
    ),
    click.option(
        "--steps-per-epoch", default=None, type=click.IntRange(min=1), help="Steps per epoch (the data repeats)."
    ),
    click.option(
        "--jit-compile/--no-jit-compile", default=False, show_default=True, help="Compile the train step with XLA."
    ),
    click.option(
        "--mixed-precision/--no-mixed-precision",
        default=False,
        show_default=True,
        help="Train under the mixed_float16 policy.",
    ),
    click.option(
        "--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adam"]), help="Optimizer."
    ),
    click.option(
        "--lr-schedule",
        default="cosine",
        show_default=True,
        type=click.Choice(["cosine", "step", "constant"]),
        help="Learning-rate schedule (step: x --lr-decay-rate at --lr-decay-epochs).",
    ),
    click.option(
        "--lr-decay-epochs",
        default="",
        callback=lambda ctx, param, value: _int_list(value, param),
        help="Comma-separated epochs of the step schedule, e.g. 150,180,210.",
    ),
    click.option(
        "--lr-decay-rate",
        default=0.1,
        show_default=True,
        type=click.FloatRange(0, 1, min_open=True),
        help="Factor of each step of the step schedule.",
    ),
    click.option(
        "--deterministic",
        is_flag=True,
        help="Deterministic ops (TensorFlow op determinism, PyTorch deterministic algorithms; slower; bit-identical "
        "reruns on CPU).",
    ),
)
# Where it runs: the Keras backend and the distribution over devices and processes.
_EXECUTION_OPTIONS = (
    click.option(
        "--backend",
        default=None,
        type=click.Choice(backend_selection.BACKENDS),
        help="Keras backend to train on [default: KERAS_BACKEND if set, else tensorflow; --resume: the run's own].",
    ),
    click.option(
        "--strategy",
        default="default",
        show_default=True,
        type=click.Choice(backend_selection.STRATEGIES),
        help="TensorFlow: mirrored (all local GPUs, MirroredStrategy), multi_worker (the machines in TF_CONFIG; every "
        "worker runs "
        "the same command). JAX: data_parallel (keras.distribution.DataParallel over all devices of all "
        "processes).",
    ),
    click.option(
        "--coordinator-address",
        default=None,
        help="data_parallel over several processes or hosts: HOST:PORT of process 0 "
        "[default: KERAS_DISTRIBUTION_JOB_ADDRESSES].",
    ),
    click.option(
        "--num-processes",
        default=None,
        type=click.IntRange(min=1),
        help="data_parallel: number of processes [default: KERAS_DISTRIBUTION_NUM_PROCESSES].",
    ),
    click.option(
        "--process-id",
        default=None,
        type=click.IntRange(min=0),
        help="data_parallel: this process's index, 0 writes the run [default: KERAS_DISTRIBUTION_PROCESS_ID].",
    ),
)
# Its recipe and run folder, and how it shows its progress.
_RUN_OPTIONS = (
    click.option(
        "--recipe",
        default=None,
        type=click.Path(dir_okay=False),
        help="YAML recipe with every hyperparameter; options given here override its fields.",
    ),
    click.option(
        "--resume",
        default=None,
        type=click.Path(file_okay=False),
        help="Continue the unfinished run whose --output was this folder.",
    ),
    click.option("--output", default=None, type=click.Path(file_okay=False), help="Run folder to create."),
    click.option("--overwrite", is_flag=True, help="Replace an existing run folder."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
)


def training_options(function):
    """The options of a training run, shared by train-teacher and distill."""
    for option in reversed(_TRAINING_OPTIONS + _EXECUTION_OPTIONS + _RUN_OPTIONS):
        function = option(function)
    return function


def _hyperparameter_help(name: str, field) -> str:
    """The field's help line, then which methods have it and their defaults."""
    from stkd_keras import methods

    defaults: dict = {}
    for method in methods.methods_with(name):
        defaults.setdefault(methods.get_method(method).defaults()[name], []).append(method)
    where = "; ".join(f"{', '.join(owners)}: default {value}" for value, owners in defaults.items())
    return f"{field.metadata.get('help', '')} [{where}]"


def hyperparameter_options(function):
    """One option per hyperparameter of the registered methods (`stkd_keras.methods`).

    Unset, the method's default applies.
    """
    from stkd_keras import methods

    for name, field in reversed(list(methods.hyperparameter_fields().items())):
        flag = "--" + name.replace("_", "-")
        kind = methods.hyperparameter_type(name)
        if kind is bool:
            off = field.metadata.get("off_flag") or "--no-" + flag[2:]
            option = click.option(f"{flag}/{off}", name, default=None, help=_hyperparameter_help(name, field))
        else:
            choices = field.metadata.get("choices")
            option = click.option(
                flag,
                name,
                default=None,
                type=click.Choice(choices) if choices else kind,
                help=_hyperparameter_help(name, field),
            )
        function = option(function)
    return function


def method_options(ctx: click.Context, options: dict) -> dict:
    """Pops the hyperparameter options from `options` and returns those given for the chosen method.

    One given on the command line that the method does not have is refused;
    one from a recipe written for another method is dropped with a note.
    """
    from stkd_keras import methods

    method = methods.get_method(options["method"])
    given = {}
    for name in methods.hyperparameter_fields():
        value = options.pop(name, None)
        if value is None:
            continue
        if name in method.hyperparameter_names():
            given[name] = value
        elif ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
            flags = ", ".join("--" + own.replace("_", "-") for own in method.hyperparameter_names()) or "none"
            raise click.BadParameter(
                f"method {method.name!r} has no hyperparameter {name} (its options: {flags}).",
                param_hint="--" + name.replace("_", "-"),
            )
        else:
            click.echo(f"Note: the recipe's {name} does not apply to method {method.name!r}; ignored.")
    return given


def apply_recipe(ctx: click.Context, options: dict, renames: dict) -> dict:
    """Recipe fields fill every option not given on the command line; returns the merged options.

    `renames` maps a recipe field to this command's option name (None: the field is not this command's).
    """
    recipe_path = options.get("recipe")
    if recipe_path is None:
        return options
    from stkd_keras.recipes import load_recipe

    merged = dict(options)
    for field, value in load_recipe(recipe_path).items():
        key = renames.get(field, field)
        if key in merged and ctx.get_parameter_source(key) is not click.core.ParameterSource.COMMANDLINE:
            merged[key] = value
    return merged


def run_config(options: dict, **fields):
    """The `RunConfig` of the options that are its fields, with `fields` on top."""
    from stkd_keras.config import RunConfig

    names = {field.name for field in dataclasses.fields(RunConfig)}
    values = {key: value for key, value in options.items() if key in names}
    values.update(fields)
    return RunConfig(**values)


def field_values(items: tuple[str, ...], param_hint: str) -> dict:
    """FIELD=VALUE options as a mapping, each value read as YAML (0.5 a float, true a bool)."""
    import yaml

    values = {}
    for item in items:
        field, separator, value = item.partition("=")
        if not separator or not field.strip():
            raise click.BadParameter(f"expected FIELD=VALUE, got {item!r}.", param_hint=param_hint)
        values[field.strip()] = yaml.safe_load(value)
    return values
