"""Recipes: YAML files holding every hyperparameter of a run.

A recipe names the dataset, the teacher and student, the method and its
parameters, the optimizer and schedule, epochs, batch size, weight decay and
seed. `stkd-keras distill --recipe FILE` runs one; options given on the command
line override single fields, and the resolved config is saved with the run.

Fields are those of `stkd_keras.config.RunConfig`, the hyperparameters of
the registered methods (`stkd_keras.methods`: `temperature`, `mixup_alpha`,
...), plus `student` (the student architecture, same as `model`),
`student_weights` (same as `weights`), and `teacher_model`, `teacher_weights`
and `teacher_epochs` (the teacher trained first when `teacher` is not
given). Unknown fields and values of the wrong type are refused with the
field's name.

Example (recipes/cifar100/resnet8x4_from_resnet32x4.yaml):

    dataset: cifar100
    teacher_model: resnet32x4
    student: resnet8x4
    method: stkd
    epochs: 240
    learning_rate: 0.05
    lr_schedule: step
    lr_decay_epochs: [150, 180, 210]
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

from stkd_keras import methods
from stkd_keras.config import RunConfig

EXTRA_FIELDS = {
    "student": str,
    "student_weights": str,
    "teacher_model": str,
    "teacher_weights": str,
    "teacher_epochs": int,
}


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the field."""


def _expected_types() -> dict:
    hints = typing.get_type_hints(RunConfig)
    run_fields = {
        field.name: hints[field.name] for field in dataclasses.fields(RunConfig) if field.name != "method_options"
    }
    hyperparameters = {name: methods.hyperparameter_type(name) for name in methods.hyperparameter_fields()}
    return {**run_fields, **hyperparameters, **EXTRA_FIELDS}


def _check_type(name: str, value, expected, path) -> object:
    origin = typing.get_origin(expected)
    arguments = typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        expected = next(a for a in arguments if a is not type(None))
        origin, arguments = typing.get_origin(expected), typing.get_args(expected)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise RecipeError(f"{path}: field `{name}` must be a list of integers. Received: {value!r}")
        return tuple(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise RecipeError(
            f"{path}: field `{name}` must be {expected.__name__}. Received: {value!r} ({type(value).__name__})"
        )
    return value


def load_recipe(path: str | os.PathLike) -> dict:
    """Reads and validates a recipe; returns its fields with their Python types.

    Raises:
        RecipeError: For a missing or unparsable file, a non-mapping, an
            unknown field (the valid ones are listed) or a mistyped value.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe {path} does not exist.")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of field: value. Received: {type(content).__name__}")
    expected = _expected_types()
    unknown = sorted(set(content) - set(expected))
    if unknown:
        raise RecipeError(f"{path}: unknown field `{unknown[0]}`. Valid fields: {', '.join(sorted(expected))}.")
    for alias, field in (("student", "model"), ("student_weights", "weights")):
        if alias in content and field in content and content[alias] != content[field]:
            raise RecipeError(
                f"{path}: `{alias}` and `{field}` name the same thing and disagree: {content[alias]!r} vs "
                f"{content[field]!r}."
            )
    return {name: _check_type(name, value, expected[name], path) for name, value in content.items()}
