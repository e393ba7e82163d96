"""The listing commands: the datasets, the distillation methods and the model zoo, each as a markdown table."""

from __future__ import annotations

import click

from stkd_keras import native_stderr
from stkd_keras.markdown import markdown_row


@click.command("datasets")
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Look here as `--data-dir` would for each dataset.",
)
def list_datasets(data_dir):
    """List the datasets, where each would be read from, and whether it is available on this machine."""
    native_stderr.import_tensorflow_quietly()  # its start-up lines are not the listing's
    from stkd_keras import data

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


@click.command("methods")
def list_method_table():
    """List the distillation methods: what the teacher sees, whether the student mixes, the hyperparameters and
    their defaults."""
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


@click.command("models")
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
    """List the models --student and --teacher-model take by name (the zoo, then keras.applications), with
    trainable parameters and MACs per image at the given input size."""
    native_stderr.import_tensorflow_quietly()
    from stkd_keras import architectures, models

    click.echo(f"Models at {input_size}x{input_size}x{channels}, {num_classes} classes:")
    click.echo("| model | from | parameters | MACs |")
    click.echo("| --- | --- | ---: | ---: |")
    for name in [*models.list_models(), *architectures.application_names()]:
        origin = "zoo" if name in models.list_models() else "keras.applications"
        try:
            model = architectures.build_model(name, num_classes, (input_size, input_size, channels))
        except ValueError as error:
            click.echo(markdown_row([name, origin, "-", error]))
            continue
        parameters = models.count_trainable_parameters(model)
        click.echo(markdown_row([name, origin, f"{parameters:,}", f"{models.count_macs(model) / 1e6:,.1f}M"]))
