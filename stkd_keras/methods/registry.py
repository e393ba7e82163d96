"""The registry of distillation methods: registration checked at import, presets, lookup, and the rule on teachers.

A method registers with `@register_method` (its declaration is checked then,
`stkd_keras.methods.base`); a preset (`register_preset`) is a registered
method with other defaults. Nothing here imports Keras: the command line lists
methods and their options before a Keras backend is chosen.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from stkd_keras.methods.base import MIXUP_FIELDS, TEACHER_INPUTS, DistillationMethod, Hyperparameters

_REGISTRY: dict[str, DistillationMethod] = {}


# Hyperparameters share one flat namespace with a run's settings (`RunConfig.to_dict`, recipes, the command line's
# options) and with the Distiller's own arguments: a hyperparameter named like one of these would silently replace it.
# The RunConfig fields, the recipe fields (`stkd_keras.recipes.EXTRA_FIELDS`) and the Distiller's arguments;
# tests/test_methods.py checks the set against them.
RESERVED_NAMES = frozenset(
    {
        "dataset",
        "model",
        "weights",
        "method",
        "teacher",
        "epochs",
        "batch_size",
        "learning_rate",
        "momentum",
        "weight_decay",
        "method_options",
        "seed",
        "train_subset",
        "val_subset",
        "validation_holdout",
        "steps_per_epoch",
        "jit_compile",
        "mixed_precision",
        "data_dir",
        "download",
        "image_size",
        "optimizer",
        "lr_schedule",
        "lr_decay_epochs",
        "lr_decay_rate",
        "deterministic",
        "strategy",
        "student",
        "student_weights",
        "teacher_model",
        "teacher_weights",
        "teacher_epochs",
        "name",
        "trainable",
        "dtype",
    }
)


def register_method(cls: type[DistillationMethod]) -> type[DistillationMethod]:
    """Class decorator: registers a `DistillationMethod` under its `name`.

    Raises:
        ValueError: For a missing or taken name, an invalid `teacher_sees`,
            hyperparameters that are not a `Hyperparameters` dataclass or that
            take a name in `RESERVED_NAMES`, a
            missing `term_names` or `loss_terms`, or a mixing method whose
            hyperparameters lack the mixup draw's.
    """
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"Expected {cls.__name__}.name to be a non-empty string. Received: name={cls.name!r}")
    if cls.name in _REGISTRY:
        raise ValueError(f"A method named {cls.name!r} is already registered ({type(_REGISTRY[cls.name]).__name__}).")
    if cls.needs_teacher and cls.teacher_sees not in TEACHER_INPUTS:
        raise ValueError(
            f"Expected {cls.__name__}.teacher_sees in {TEACHER_INPUTS}. Received: teacher_sees={cls.teacher_sees!r}"
        )
    if not (dataclasses.is_dataclass(cls.hyperparameters) and issubclass(cls.hyperparameters, Hyperparameters)):
        raise ValueError(
            f"Expected {cls.__name__}.hyperparameters to be a Hyperparameters dataclass. Received: "
            f"{cls.hyperparameters!r}"
        )
    if cls.__abstractmethods__:
        raise ValueError(
            f"{cls.__name__} must define {', '.join(f'{name}()' for name in sorted(cls.__abstractmethods__))}."
        )
    taken = sorted(RESERVED_NAMES & {field.name for field in dataclasses.fields(cls.hyperparameters)})
    if taken:
        raise ValueError(
            f"{cls.__name__}'s hyperparameters {taken} share their names with a run's own settings (a RunConfig field, "
            "a recipe "
            "field or a Distiller argument), where one would silently replace the other; rename them. Reserved: "
            f"{sorted(RESERVED_NAMES)}"
        )
    missing = (
        sorted(MIXUP_FIELDS - {field.name for field in dataclasses.fields(cls.hyperparameters)}) if cls.mixes else []
    )
    if missing:
        raise ValueError(
            f"{cls.__name__} mixes, so its hyperparameters need {sorted(MIXUP_FIELDS)} (e.g. by subclassing "
            f"stkd_keras.methods.mixup.MixupHyperparameters). Missing: {missing}"
        )
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_method(name: str) -> None:
    """Removes a method or preset from the registry (for tests that register one for their own duration).

    Raises:
        ValueError: If no method of that name is registered.
    """
    if name not in _REGISTRY:
        raise ValueError(f"No method named {name!r} is registered.")
    del _REGISTRY[name]


def register_preset(name: str, method: str, description: str, **defaults) -> DistillationMethod:
    """Registers `name` as `method` with other default hyperparameters (checked now).

    Raises:
        ValueError: For a taken name, an unknown method, or defaults the method
            does not have or cannot use.
    """
    if name in _REGISTRY:
        raise ValueError(f"A method named {name!r} is already registered.")
    base = get_method(method)
    base.make_hyperparameters(**defaults)  # the base method must have and accept the new defaults
    preset = copy.copy(base)
    preset.name = name
    preset.description = description
    preset.default_overrides = {**base.default_overrides, **defaults}
    _REGISTRY[name] = preset
    return preset


def get_method(name: str) -> DistillationMethod:
    """The registered method (or preset) called `name`.

    Raises:
        ValueError: If no method has that name (the registered ones are listed).
    """
    if isinstance(name, DistillationMethod):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"Expected `method` to be one of {list_methods()}. Received: method={name!r}") from None


def list_methods(needs_teacher: bool | None = None) -> tuple[str, ...]:
    """The names of the registered methods and presets, in registration order.

    With `needs_teacher`, only the methods that need a teacher (True) or those that do not (False).
    """
    return tuple(
        name for name, method in _REGISTRY.items() if needs_teacher is None or method.needs_teacher == needs_teacher
    )


def check_teacher(method, teacher, how: str = "teacher") -> "DistillationMethod":
    """The one rule on teachers: a method that distils from one is given one, a method that trains alone is given none.

    Args:
        method: A registered method (name or object).
        teacher: What the caller was given as the teacher (a model, a path, a config), or None.
        how: How the caller gives a teacher, for the message's advice: "teacher" for the Python API,
            "--teacher" on the command line.

    Returns:
        The method.

    Raises:
        ValueError: Naming the method, what to do, and what was received.
    """
    method = get_method(method)  # a name, or the method itself
    if method.needs_teacher and teacher is None:
        raise ValueError(
            f"Method {method.name!r} distils from a teacher, but none was given; pass {how}, or choose a method that "
            "trains "
            f"alone: {list(list_methods(needs_teacher=False))}. Received: teacher=None"
        )
    if not method.needs_teacher and teacher is not None:
        received = getattr(teacher, "name", None) or str(teacher)
        raise ValueError(
            f"Method {method.name!r} trains the student alone and uses no teacher; drop {how}, or choose one of "
            f"{list(list_methods(needs_teacher=True))}. Received: teacher={received!r}"
        )
    return method


def hyperparameter_fields() -> dict[str, dataclasses.Field]:
    """Every hyperparameter name of the registered methods, with its dataclass field (the first method's, if shared)."""
    fields: dict[str, dataclasses.Field] = {}
    for method in _REGISTRY.values():
        for field in dataclasses.fields(method.hyperparameters):
            fields.setdefault(field.name, field)
    return fields


def hyperparameter_type(name: str) -> type:
    """The Python type (float, bool, int, str) of a registered hyperparameter."""
    for method in _REGISTRY.values():
        if name in method.hyperparameter_names():
            return typing.get_type_hints(method.hyperparameters)[name]
    raise ValueError(f"No registered method has a hyperparameter `{name}`.")


def methods_with(hyperparameter: str) -> tuple[str, ...]:
    """The registered methods that have a hyperparameter of this name."""
    return tuple(name for name, method in _REGISTRY.items() if hyperparameter in method.hyperparameter_names())


def non_default(method: str, values: Mapping[str, Any]) -> dict:
    """The entries of `values` that are hyperparameters of `method` and differ from its defaults."""
    method = get_method(method)
    defaults = method.defaults()
    return {name: value for name, value in values.items() if name in defaults and value != defaults[name]}
