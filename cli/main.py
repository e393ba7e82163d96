"""`stkd-keras`: distil compact image classifiers with STKD from the shell."""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import click

from stkd_keras import backend_selection, native_stderr
from stkd_keras.markdown import markdown_row

DEFAULT_TEACHER_MODEL = "resnet14"


def _library():
    """Imports the library (and with it TensorFlow) only when a command needs it, so `--help` answers at once."""
    from stkd_keras import data, distiller, models, training

    return data, distiller, models, training


def _choice_of(names_getter):
    """A click type that lists the valid names in its error, built lazily."""

    class _Names(click.ParamType):
        name = "name"

        def convert(self, value, param, ctx):
            names = names_getter()
            if value not in names:
                self.fail(f"{value!r} is not one of: {', '.join(names)}.", param, ctx)
            return value

    return _Names()


def _dataset_names():
    from stkd_keras import data  # Keras-free: a wrong name answers without loading a backend

    return data.list_datasets()


class _DatasetName(click.ParamType):
    """A dataset name, or `folder:PATH`."""

    name = "dataset"

    def convert(self, value, param, ctx):
        names = _dataset_names()
        if value in names or value.startswith("folder:") and len(value) > len("folder:"):
            return value
        self.fail(f"{value!r} is not one of: {', '.join(names)}.", param, ctx)


class _CountOrAll(click.ParamType):
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


def _model_names():
    from stkd_keras.config import MODEL_NAMES  # Keras-free, checked against the zoo in tests/test_zoo.py

    return list(MODEL_NAMES)


def _method_names():
    from stkd_keras.methods import list_methods

    return list(list_methods())


def _data_options(function):
    options = [
        click.option(
            "--dataset",
            default="fashion_mnist",
            show_default=True,
            type=_DatasetName(),
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
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _training_options(function):
    options = [
        click.option(
            "--image-size",
            default=None,
            type=click.IntRange(min=1),
            help="folder: datasets: resize images to this square size (default 32).",
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
            help="Validate on N training images set apart (never trained on; the last N of the training split's fixed shuffle) "
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
            help="Deterministic ops (TensorFlow op determinism, PyTorch deterministic algorithms; slower; bit-identical reruns on CPU).",
        ),
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
            help="TensorFlow: mirrored (all local GPUs, MirroredStrategy), multi_worker (the machines in TF_CONFIG; every worker runs "
            "the same command). JAX: data_parallel (keras.distribution.DataParallel over all devices of all "
            "processes).",
        ),
        click.option(
            "--coordinator-address",
            default=None,
            help="data_parallel over several processes or hosts: HOST:PORT of process 0 [default: KERAS_DISTRIBUTION_JOB_ADDRESSES].",
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
    ]
    for option in reversed(options):
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


def _hyperparameter_options(function):
    """One option per hyperparameter of the registered methods (`stkd_keras.methods`); unset, the method's default applies."""
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


def _method_options(ctx: click.Context, options: dict) -> dict:
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


def _user_errors(function):
    """Turns the library's errors about user input into one-sentence click errors."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except OSError as error:
            raise click.ClickException(_os_error_sentence(error)) from None
        except (ValueError, RuntimeError) as error:
            from stkd_keras.data import DatasetNotFoundError
            from stkd_keras.runs import RunError

            if isinstance(error, (ValueError, RunError, DatasetNotFoundError)):
                raise click.ClickException(str(error)) from None
            if "stkd_keras.export" in sys.modules and isinstance(error, sys.modules["stkd_keras.export"].ExportError):
                raise click.ClickException(str(error)) from None
            raise

    return wrapper


# What to do about an operating-system error, by its errno; the sentence names the path and the error first.
_OS_ADVICE = {
    errno.ENOSPC: "free some space and run the command again (a training run continues from its last completed epoch with --resume)",
    errno.EDQUOT: "free some space and run the command again (a training run continues from its last completed epoch with --resume)",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EACCES: "check its permissions or choose another folder",
    errno.EPERM: "check its permissions or choose another folder",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def _os_error_sentence(error: OSError) -> str:
    """One sentence for an operating-system error: what happened, to which path, and what to do."""
    what = error.strerror or type(error).__name__
    where = f" ({error.filename})" if error.filename else ""
    advice = _OS_ADVICE.get(error.errno, "check the path and run the command again")
    return f"{what}{where}: {advice}."


def _option_value(args: list[str], flag: str) -> str | None:
    """The value given to `flag` in raw command-line arguments (`--flag VALUE` or `--flag=VALUE`), if any."""
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _recorded_backend(resume: str | None) -> str | None:
    """The backend an unfinished run started on (its run.json), read without importing Keras."""
    if resume is None:
        return None
    from stkd_keras import runs

    try:
        saved = runs.read_run_file(runs.find_unfinished_run(resume))
    except (runs.RunError, ValueError, OSError):
        return None  # the command reports it once the options are read
    return None if saved is None else saved.get("backend", "tensorflow")  # runs from before --backend ran on TensorFlow


class _BackendCommand(click.Command):
    """A command that trains or runs models: it chooses the Keras backend before its options import Keras.

    Converting some options (model and dataset names) imports the library and
    with it Keras, which fixes its backend once per process; so the backend
    (`--backend`, else the one a `--resume`d run started on, else
    `KERAS_BACKEND`, else TensorFlow) is read from the raw arguments first.
    The raw arguments are kept: a process whose Keras already runs another
    backend runs the command again in a child process (`_use_backend`).
    """

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_backend = backend  # export runs the TensorFlow converters, whatever the caller uses

    def parse_args(self, ctx, args):
        ctx.meta["stkd_keras.args"] = list(args)
        wanted = (
            self.fixed_backend or _option_value(args, "--backend") or _recorded_backend(_option_value(args, "--resume"))
        )
        wanted = wanted or backend_selection.default_backend()
        if wanted in backend_selection.BACKENDS and backend_selection.loaded_backend() is None:
            try:
                backend_selection.select(wanted)
            except ValueError:
                pass  # reported in one sentence by the command itself
        return super().parse_args(ctx, args)


def _check_backend(backend: str | None) -> None:
    """A --backend whose package is missing, in one sentence, before anything else is checked or loaded."""
    if backend is not None:
        try:
            backend_selection.check_backend(backend)
        except ValueError as error:
            raise click.ClickException(str(error)) from None


def _use_backend(ctx: click.Context, backend: str | None, resume: str | None = None) -> str:
    """Makes sure the command runs on its backend; in a process whose Keras runs another, reruns it in a child and exits."""
    recorded = _recorded_backend(resume)
    if backend is not None and recorded is not None and backend != recorded:
        raise click.BadParameter(
            f"the run to resume started on the {recorded} backend and continues on it; drop --backend.",
            param_hint="--backend",
        )
    wanted = backend or recorded or backend_selection.default_backend()
    try:
        if backend_selection.select(wanted):
            # The data pipeline (tf.data) and the export use TensorFlow on every backend where it is installed.
            native_stderr.import_tensorflow_quietly()
            return wanted
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    # Keras is already imported here on another backend, and Keras picks its backend once per process.
    command = [sys.executable, "-m", "stkd_keras.cli.main", ctx.info_name, *ctx.meta["stkd_keras.args"]]
    environment = {**os.environ, "KERAS_BACKEND": wanted, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in child.stdout:
        click.echo(line, nl=False)
    ctx.exit(child.wait())


def _int_list(value, param):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}.", param=param) from None


def _apply_recipe(ctx: click.Context, options: dict, renames: dict) -> dict:
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


def _config(options: dict, **fields):
    from stkd_keras.config import RunConfig

    names = {field.name for field in dataclasses.fields(RunConfig)}
    values = {key: value for key, value in options.items() if key in names}
    values.update(fields)
    return RunConfig(**values)


def _report(metrics: dict, output: Path | None, role: str) -> None:
    if output is None:  # a multi-worker worker other than the chief: the chief saves and reports
        click.echo(f"Worker finished; the chief saved the {role}.")
        return
    click.echo(
        f"{role.capitalize()} {metrics['model']}: final-epoch val top-1 {metrics['final_val_accuracy']:.4f}, "
        f"best-epoch val top-1 {metrics['best_val_accuracy']:.4f} (epoch {metrics['best_epoch']['epoch']}). "
        f"Saved {output / ('teacher.keras' if role == 'teacher' else 'student.keras')}."
    )


@click.group()
@click.version_option(package_name="stkd-keras")
def cli():
    """Similarity Transfer for Knowledge Distillation (STKD) for Keras 3."""


def _start_or_resume(ctx, backend, resume, output, quiet, options: dict, prepare):
    """What train-teacher and distill share: the options checked, the backend, then the new or the resumed run.

    `prepare()` checks the options and returns `start(training, verbose=, cluster=)`;
    it runs before the backend (and with it TensorFlow) is imported, so a
    mistake is answered at once.
    """
    if resume is None and output is None:
        raise click.UsageError("Missing option '--output' (or --resume to continue an unfinished run).")
    if resume is not None:
        _refuse_options_with_resume(ctx)
    run = {"verbose": 0 if quiet else "auto", "cluster": _cluster(options)}
    _check_backend(backend)
    start = prepare() if resume is None else None
    _use_backend(ctx, backend, resume)
    training = _library()[3]
    if resume is not None:
        return training.resume(resume, log=click.echo, command=ctx.info_name, **run)
    return start(training, **run)


# A resumed run continues with the options its run.json records; only how it shows and where it runs may be given.
_OPTIONS_WITH_RESUME = {"resume", "quiet", "backend", "coordinator_address", "num_processes", "process_id"}


def _refuse_options_with_resume(ctx: click.Context) -> None:
    """Refuses, naming them, the options given with --resume that the resumed run would ignore."""
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name not in _OPTIONS_WITH_RESUME
        and ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        given.sort()
        raise click.UsageError(
            f"{', '.join(given)} cannot change a resumed run, which continues with the options recorded in its "
            "run.json; "
            f"drop {'them' if len(given) > 1 else 'it'}, or start a new run with --overwrite."
        )


def _cluster(options: dict) -> dict | None:
    """The multi-process options of a data_parallel run (popped from `options`), or None."""
    cluster = {name: options.pop(name, None) for name in ("coordinator_address", "num_processes", "process_id")}
    return {name: value for name, value in cluster.items() if value is not None} or None


@cli.command("train-teacher", cls=_BackendCommand)
@_data_options
@click.option(
    "--model", default="resnet20", show_default=True, type=_choice_of(_model_names), help="Teacher architecture."
)
@_training_options
@_user_errors
@click.pass_context
def train_teacher(ctx, output, overwrite, quiet, resume, backend, **options):
    """Train a teacher with cross-entropy; writes teacher.keras, history.csv and metrics.json to OUTPUT."""

    def prepare():
        renames = {
            "teacher_model": "model",
            "teacher_epochs": "epochs",
            "student": None,
            "model": None,
            "teacher": None,
        }
        config = _config(_apply_recipe(ctx, options, renames), method="ce")
        config.validate()
        return lambda training, **run: training.train_teacher(config, output, overwrite, log=click.echo, **run)

    result = _start_or_resume(ctx, backend, resume, output, quiet, options, prepare)
    _report(result.metrics, result.output, "teacher")


@cli.command(cls=_BackendCommand)
@_data_options
@click.option(
    "--teacher",
    default=None,
    type=click.Path(),
    help="Teacher .keras file or run folder. Without it, one is trained first.",
)
@click.option(
    "--teacher-model",
    default=DEFAULT_TEACHER_MODEL,
    show_default=True,
    type=_choice_of(_model_names),
    help="Architecture of the teacher trained when --teacher is not given.",
)
@click.option(
    "--teacher-epochs", default=None, type=click.IntRange(min=1), help="Epochs of that teacher (default: --epochs)."
)
@click.option(
    "--student", default="resnet8", show_default=True, type=_choice_of(_model_names), help="Student architecture."
)
@click.option(
    "--method",
    default="stkd",
    show_default=True,
    type=click.Choice(_method_names()),
    help="Training method (`stkd-keras methods` describes each).",
)
@_hyperparameter_options
@_training_options
@_user_errors
@click.pass_context
def distill(ctx, output, overwrite, quiet, resume, backend, **options):
    """Distil a student with STKD (or a baseline method) into OUTPUT.

    Writes student.keras, history.csv and metrics.json; a teacher trained on
    the way goes to OUTPUT/teacher/. A run killed at any moment continues
    with --resume OUTPUT from its last completed epoch, on the backend it
    started on.
    """
    from stkd_keras.config import teacher_config_for
    from stkd_keras.methods import check_teacher
    from stkd_keras.runs import model_file

    def prepare():
        merged = _apply_recipe(ctx, options, {"model": "student"})
        method_options = _method_options(ctx, merged)
        teacher, teacher_model, teacher_epochs = (
            merged.pop("teacher"),
            merged.pop("teacher_model"),
            merged.pop("teacher_epochs"),
        )
        config = _config(merged, model=merged.pop("student"), teacher=teacher, method_options=method_options)
        if teacher is not None:
            try:
                check_teacher(config.method, teacher, "--teacher")  # without one, distill trains a teacher first
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--teacher") from None
        if teacher is not None:
            model_file(teacher, "teacher")  # a missing or non-Keras teacher file is named before anything loads
        config.validate()
        teacher_config = teacher_config_for(config, teacher_model, teacher_epochs)
        return lambda training, **run: training.distill(
            config, output, teacher_config, overwrite, log=click.echo, **run
        )

    result = _start_or_resume(ctx, backend, resume, output, quiet, options, prepare)
    _report(result.metrics, result.output, "student")


@cli.command(cls=_BackendCommand)
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help="A .keras model file or run folder, or an exported .tflite / .onnx file.",
)
@_data_options
@click.option(
    "--split", default="test", show_default=True, type=click.Choice(["train", "test"]), help="Split to evaluate on."
)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="Batch size.")
@click.option("--subset", default=None, type=click.IntRange(min=1), help="Evaluate on the first N images only.")
@click.option(
    "--json",
    "json_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Where to write the results (default: evaluation_DATASET_SPLIT.json beside the model).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing results file.")
@click.option(
    "--backend",
    default=None,
    type=click.Choice(backend_selection.BACKENDS),
    help="Keras backend to run a .keras model on (it may have been trained on any) [default: KERAS_BACKEND if set, else tensorflow].",
)
@click.option("--quiet", is_flag=True, help="No progress while evaluating; only the result.")
@_user_errors
@click.pass_context
def evaluate(
    ctx, model_path, dataset, data_dir, download, split, batch_size, subset, json_path, overwrite, backend, quiet
):
    """Print top-1 / top-5 accuracy of a saved model and write them to JSON."""
    from stkd_keras import runs

    # Checked before the backend (and TensorFlow) loads, so a mistake is answered at once.
    _check_backend(backend)
    if Path(model_path).suffix in (".tflite", ".onnx"):
        if not Path(model_path).is_file():
            raise click.ClickException(f"Model file {model_path} does not exist.")
    else:
        runs.model_file(model_path)
        preprocessing = runs.read_preprocessing(model_path)
        if preprocessing is not None:
            runs.check_preprocessing_fits(preprocessing, dataset, model_path)
    _use_backend(ctx, backend)
    _library()  # registers the models' own layers, which a saved model may use
    from stkd_keras import evaluation

    model_path = Path(model_path)
    if json_path is None:
        folder = model_path if model_path.is_dir() else model_path.parent
        label = f"folder-{Path(dataset[len('folder:') :]).name}" if dataset.startswith("folder:") else dataset
        exported = model_path.suffix in (".tflite", ".onnx")
        json_path = folder / (
            f"evaluation_{model_path.name.replace('.', '_')}_{label}_{split}.json"
            if exported
            else f"evaluation_{label}_{split}.json"
        )
    json_path = Path(json_path)
    if json_path.exists() and not overwrite:
        raise click.ClickException(
            f"Results file {json_path} already exists; pass --overwrite to replace it or choose --json."
        )
    results = evaluation.evaluate(
        model_path,
        dataset,
        split=split,
        batch_size=batch_size,
        subset=subset,
        data_dir=data_dir,
        download=download,
        log=None if quiet else click.echo,
    )
    runs.write_json(json_path, results)
    click.echo(
        f"{model_path} on {dataset}/{split} ({results['num_examples']} images): "
        f"top-1 {results['accuracy']:.4f}, top-5 {results['top5_accuracy']:.4f}. Wrote {json_path}."
    )


@cli.command(cls=_BackendCommand, backend="tensorflow")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help="The student .keras file (or its run folder), trained on any backend.",
)
@click.option(
    "--format",
    "export_format",
    default="all",
    show_default=True,
    type=click.Choice(["tflite", "onnx", "all"]),
    help="Which runtimes to export for.",
)
@click.option(
    "--quantize",
    "quantize",
    multiple=True,
    metavar="MODES",
    help="Quantization modes, comma-separated or repeated: float32 (or none), float16, dynamic, int8, or all (every mode the "
    "formats have). Each mode is written for every chosen format that has it (ONNX: float32, int8). [default: "
    "float32,int8]",
)
@click.option(
    "--qat",
    "qat_epochs",
    default=None,
    type=click.IntRange(min=1),
    help="Also export int8 after N epochs of quantization-aware training (tfmot, fine-tuned with the run's method).",
)
@click.option(
    "--prune",
    "prune_sparsity",
    default=None,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Also export int8 after pruning to this sparsity (tfmot).",
)
@click.option(
    "--teacher",
    default=None,
    type=click.Path(),
    help="Teacher for QAT/pruning fine-tuning (default: the run's teacher/ folder, or the teacher its metrics.json names).",
)
@click.option(
    "--finetune-method",
    default=None,
    type=click.Choice(_method_names()),
    help="Distillation method of the QAT/pruning fine-tuning (default: the run's own, from its metrics.json; without one, stkd when there is a teacher, else ce).",
)
@click.option(
    "--finetune-option",
    "finetune_options",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A hyperparameter of that method (repeatable; default: the run's own values, else the method's defaults).",
)
@click.option(
    "--finetune-subset",
    default=None,
    type=click.IntRange(min=1),
    help="Training images for QAT/pruning fine-tuning (default: the whole training split; e.g. 5000 for a quick pass).",
)
@click.option(
    "--dataset",
    default=None,
    type=_DatasetName(),
    help="Dataset for verification and calibration (default: the one the model was trained on).",
)
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="As for distill.")
@click.option("--download/--no-download", default=True, show_default=True, help="Let tfds download a missing dataset.")
@click.option(
    "--verify-images",
    default="500",
    show_default=True,
    type=_CountOrAll(),
    help="Test images each file is verified on: the first N, or all (the whole test split, comparable with evaluate).",
)
@click.option(
    "--representative-images",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Training images for int8 calibration.",
)
@click.option(
    "--dynamic-batch", is_flag=True, help="Keep the batch dimension free (default: fixed to 1 for edge delegates)."
)
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=13), help="ONNX opset.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Folder for the exported files.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the earlier export in the folder (its files this export does not write are removed).",
)
@_user_errors
@click.pass_context
def export(
    ctx,
    model_path,
    export_format,
    quantize,
    qat_epochs,
    prune_sparsity,
    teacher,
    finetune_method,
    finetune_options,
    finetune_subset,
    dataset,
    data_dir,
    download,
    verify_images,
    representative_images,
    dynamic_batch,
    opset,
    output,
    overwrite,
):
    """Export a student to TFLite/LiteRT and ONNX, verify each file in its runtime, and write export_report.json.

    The converters are TensorFlow's: the export runs on the TensorFlow backend
    (in a child process when this one runs Keras on another), whichever
    backend trained the student.
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise click.ClickException(
            "Export runs the TensorFlow converters, and TensorFlow is not installed: pip install 'stkd-keras[export]'."
        )
    from stkd_keras.export import run as export_run

    options = export_run.ExportOptions(
        formats=("tflite", "onnx") if export_format == "all" else (export_format,),
        quantize=quantize or None,
        qat_epochs=qat_epochs,
        prune_sparsity=prune_sparsity,
        teacher=teacher,
        finetune_method=finetune_method,
        finetune_options=_field_values(finetune_options, "--finetune-option"),
        finetune_subset=finetune_subset,
        dataset=dataset,
        data_dir=data_dir,
        download=download,
        verify_images=None if verify_images == "all" else verify_images,
        representative_images=representative_images,
        dynamic_batch=dynamic_batch,
        opset=opset,
        overwrite=overwrite,
    )
    # Everything that can be checked without TensorFlow is, so a mistake is answered at once.
    try:
        job = export_run.prepare_export(model_path, options)
    except export_run.ExportOptionError as error:
        raise click.BadParameter(str(error), param_hint=error.option) from None
    except export_run.ExportError as error:
        raise click.ClickException(str(error)) from None
    _use_backend(ctx, "tensorflow")
    report = export_run.export_run(model_path, output, options, log=click.echo, job=job)
    dataset = job.dataset
    click.echo(_verification_line(report, dataset))
    click.echo("| file | input | size | max abs logit diff | top-1 agreement | top-1 | ms/image |")
    click.echo("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in report["files"]:
        click.echo(
            markdown_row(
                [
                    row["file"],
                    row["input_dtype"],
                    f"{row['size_bytes'] / 1024:,.0f} KiB",
                    f"{row['max_abs_logit_diff']:.2e}",
                    f"{row['top1_agreement']:.4f}",
                    f"{row['top1_accuracy']:.4f}",
                    f"{row['ms_per_image']:.2f}",
                ]
            )
        )
    click.echo(f"Wrote {Path(output) / 'export_report.json'}.")


def _verification_line(report: dict, dataset: str) -> str:
    """Keras's top-1 on the verification images, saying whether they are the whole test split or its first N."""
    count = report["verification_images"]
    top1 = report["keras_top1_accuracy"]
    if report.get("verification_is_whole_split"):
        return f"Keras top-1 on the whole {dataset} test split ({count:,} images): {top1:.4f}; the files' top-1 below is on the same images."
    return (
        f"Keras top-1 on the first {count:,} {dataset} test images (the verification subset, not the whole split; "
        f"--verify-images all measures all of it, as evaluate does): {top1:.4f}"
    )


def _field_values(items: tuple[str, ...], param_hint: str) -> dict:
    """FIELD=VALUE options as a mapping, each value read as YAML (0.5 a float, true a bool)."""
    import yaml

    values = {}
    for item in items:
        field, separator, value = item.partition("=")
        if not separator or not field.strip():
            raise click.BadParameter(f"expected FIELD=VALUE, got {item!r}.", param_hint=param_hint)
        values[field.strip()] = yaml.safe_load(value)
    return values


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Where to draw the training curves (default: RUN_DIR/curves.png).",
)
@_user_errors
def report(run_dir, plot_path):
    """Summarise a finished run and draw its training curves to a PNG, or list the runs in a folder.

    On a run folder (one holding metrics.json) it prints the run's summary and
    writes curves.png. On any other folder it lists every run below it:
    finished runs (method, backend, epochs, final top-1), unfinished ones (the
    epoch each reached and the command that continues it) and damaged ones,
    named and skipped.
    """
    from stkd_keras import reporting, runs

    run_dir = Path(run_dir)
    if (run_dir / runs.METRICS_FILE).is_file():
        click.echo(reporting.summary(run_dir))
        path = reporting.plot_curves(run_dir, Path(plot_path) if plot_path else run_dir / "curves.png")
        click.echo(f"Wrote {path}.")
        unfinished = runs.unfinished_runs(run_dir)
        if unfinished:
            click.echo("\n".join(reporting.unfinished_lines(unfinished)))
        return
    click.echo("\n".join(reporting.listing(run_dir)))


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--baseline", default="kd", show_default=True, help="Method the others are compared with.")
@click.option(
    "--baseline-setting",
    "baseline_fields",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Compare every row with the baseline method in the one setting with these config values (repeatable; for ablations).",
)
@click.option(
    "--markdown",
    "markdown_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write the table to this markdown file.",
)
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Draw per-seed accuracies and curves to this PNG.",
)
@_user_errors
def compare_runs(run_dirs, baseline, baseline_fields, markdown_path, plot_path):
    """Compare finished runs: mean, std, n, min/max of final and best-epoch top-1, and the difference to a baseline."""
    from stkd_keras import compare as compare_lib

    baseline_setting = _field_values(baseline_fields, "--baseline-setting")
    rows = compare_lib.compare(compare_lib.load_runs(run_dirs), baseline, baseline_setting or None)
    table = compare_lib.markdown(rows, baseline)
    click.echo(table, nl=False)
    if markdown_path:
        from stkd_keras.files import atomic_write

        path = atomic_write(markdown_path, lambda temporary: temporary.write_text(table))
        click.echo(f"Wrote {path}.")
    if plot_path:
        click.echo(f"Wrote {compare_lib.plot(rows, plot_path)}.")


@cli.command("datasets")
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Look here as `--data-dir` would for each dataset.",
)
def list_datasets(data_dir):
    """List the datasets, where each would be read from, and whether it is available on this machine."""
    native_stderr.import_tensorflow_quietly()  # its start-up lines are not the listing's
    data = _library()[0]
    click.echo("| dataset | classes | input | available | read from |")
    click.echo("| --- | ---: | --- | --- | --- |")
    for name in data.list_datasets():
        if name.startswith(data.FOLDER_PREFIX):
            click.echo(
                markdown_row(
                    [
                        name,
                        "from PATH",
                        "--image-size",
                        "yes, if PATH holds class folders",
                        "PATH/<class>/*.jpg, *.png, ... (or PATH/train, PATH/val)",
                    ]
                )
            )
            continue
        spec = data.get_spec(name)
        where = data.describe(name, data_dir)
        shape = "x".join(str(d) for d in spec.input_shape)
        click.echo(
            markdown_row([name, spec.num_classes, shape, "yes" if where["available"] else "no", where["source"]])
        )


@cli.command("methods")
def list_method_table():
    """List the distillation methods: what the teacher sees, whether the student mixes, the hyperparameters and their defaults."""
    from stkd_keras import methods

    click.echo("| method | teacher sees | student sees | hyperparameters (defaults) | what it is |")
    click.echo("| --- | --- | --- | --- | --- |")
    for name in methods.list_methods():
        method = methods.get_method(name)
        teacher = (
            method.teacher_input(method.make_hyperparameters()) + " images" if method.needs_teacher else "no teacher"
        )
        student = "mixup samples" if method.mixes else "clean images"
        defaults = ", ".join(f"{key}={value}" for key, value in method.defaults().items()) or "-"
        click.echo(markdown_row([name, teacher, student, defaults, method.description]))


@cli.command("models")
@click.option(
    "--input-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Height and width of the input, in pixels.",
)
@click.option("--channels", default=3, show_default=True, type=click.IntRange(min=1), help="Input channels.")
@click.option("--num-classes", default=100, show_default=True, type=click.IntRange(min=2), help="Number of classes.")
def list_zoo(input_size, channels, num_classes):
    """List the model zoo with trainable parameters and MACs per image at the given input size."""
    models = _library()[2]
    click.echo(f"Models at {input_size}x{input_size}x{channels}, {num_classes} classes:")
    click.echo("| model | parameters | MACs |")
    click.echo("| --- | ---: | ---: |")
    for name in models.list_models():
        try:
            model = models.get_model(name, num_classes, (input_size, input_size, channels))
        except ValueError as error:
            click.echo(markdown_row([name, "-", error]))
            continue
        click.echo(
            markdown_row(
                [name, f"{models.count_trainable_parameters(model):,}", f"{models.count_macs(model) / 1e6:,.1f}M"]
            )
        )


if __name__ == "__main__":
    cli()
