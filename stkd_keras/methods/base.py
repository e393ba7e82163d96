"""What a distillation method is: its declaration, its hyperparameters, and the batch context its loss reads.

A method is a `DistillationMethod` subclass registered by name with
`@register_method`. It declares:

- `needs_teacher`: whether it distils from a teacher;
- `mixes`: whether the student trains on mixup samples;
- `teacher_sees`: "clean" or "mixed", the images the teacher runs on in
  training (in evaluation every network sees the clean batch); a method
  whose hyperparameters change that overrides `teacher_input`;
- `hyperparameters`: a `Hyperparameters` dataclass holding the method's
  hyperparameters and their defaults, the only place a default is written;
- `uses_clean_logits(hyperparameters)`: whether a training step also needs
  the student's (and teacher's) logits on the un-mixed batch;
- `loss_terms(context, hyperparameters)`: the loss as named, weighted terms
  of one `BatchContext`. The loss is sum(weight * value); each term's value,
  unweighted, is reported as a metric of that name.

The registry (`stkd_keras.methods.registry`: `register_method`, presets,
`get_method`, the rule on teachers) and the step (`stkd_keras.methods.step`:
`forward`, `batch_context`, `step_loss`) live beside this module.

The declarations and the registry import no Keras: the command line lists
methods and their options before a Keras backend is chosen. What runs inside
a step (`forward`, `batch_context`, the methods' loss terms) imports Keras
when it is called.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from stkd_keras.validation import validate_loss_weights

TEACHER_INPUTS = ("clean", "mixed")
# What `forward` reads from the hyperparameters of a method that mixes; `mix_fraction`, where they have it, too.
MIXUP_FIELDS = frozenset({"mixup_alpha", "lambda_per_sample"})


@dataclasses.dataclass
class Hyperparameters:
    """Base of every method's hyperparameters: validated on creation (`validate`).

    Subclasses are dataclasses whose fields carry their defaults and, in
    `metadata["help"]`, one line for the command line. A boolean field may
    name its off flag in `metadata["off_flag"]` (e.g. `--lambda-per-batch`).
    """

    def __post_init__(self):
        self.validate()

    def loss_weights(self) -> dict:
        """The method's loss weights, by name (none here); where there are any, each is >= 0 and one is > 0."""
        return {}

    def validate(self) -> None:
        """Raises `ValueError` naming a field that no run can use; subclasses extend it (cooperatively).

        Here: the `loss_weights`, which become floats.
        """
        weights = self.loss_weights()
        if weights:
            for name, value in zip(weights, validate_loss_weights(**weights)):
                setattr(self, name, value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LossTerm(NamedTuple):
    """One term of a method's loss: its unweighted value (a float32 scalar) and its weight."""

    value: Any
    weight: Any = 1.0


@dataclasses.dataclass
class BatchContext:
    """Everything a method's loss may read for one batch.

    Attributes:
        labels: One-hot (or soft) labels, float32 `(batch, classes)`, mixed
            like the images the student saw when the method mixes.
        student_logits: The student's float32 logits on what it saw.
        teacher_logits: The teacher's float32 logits on what it saw (clean or
            mixed, per `DistillationMethod.teacher_input`), or None without a
            teacher.
        clean_labels: The labels of the un-mixed batch.
        clean_student_logits, clean_teacher_logits: Logits on the un-mixed
            batch, where the method asks for them (`uses_clean_logits`); in
            evaluation, where the batch is clean, the same as
            `student_logits` / `teacher_logits`. None otherwise.
        lam: The mixing coefficients (shape `()` or `(batch,)`; 1 for a
            sample left clean by `mix_fraction`), or None.
        permutation: The int32 mixing permutation of the batch, or None.
        sample_weight: Per-sample weights (mixed like the labels), or None.
        epoch: The 0-based epoch of `fit` (an int32 scalar tensor), for
            warm-ups.
        step: Training steps taken before this one (an int scalar tensor).
        training: True in a training step, False in evaluation.
    """

    labels: Any
    student_logits: Any
    teacher_logits: Any = None
    clean_labels: Any = None
    clean_student_logits: Any = None
    clean_teacher_logits: Any = None
    lam: Any = None
    permutation: Any = None
    sample_weight: Any = None
    epoch: Any = 0
    step: Any = 0
    training: bool = True


class DistillationMethod(abc.ABC):
    """A distillation method: see the module docstring for what a subclass declares.

    Instances are stateless descriptions; `get_method(name)` returns the
    registered one.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hyperparameters: ClassVar[type[Hyperparameters]] = Hyperparameters
    needs_teacher: ClassVar[bool] = False
    mixes: ClassVar[bool] = False
    teacher_sees: ClassVar[str | None] = None

    # Overrides of the dataclass defaults: set on presets only (`register_preset`).
    # A preset's defaults over its method's (`registry.register_preset`); empty for a method of its own.
    default_overrides: Mapping[str, Any] = {}

    def uses_clean_logits(self, hyperparameters: Hyperparameters) -> bool:
        """Whether a training step also needs the logits on the un-mixed batch."""
        return False

    def teacher_input(self, hyperparameters: Hyperparameters) -> str | None:
        """What the teacher sees in training with these hyperparameters, "clean" or "mixed"; default `teacher_sees`."""
        return self.teacher_sees

    @abc.abstractmethod
    def term_names(self, hyperparameters: Hyperparameters) -> tuple[str, ...]:
        """The names of the terms `loss_terms` returns, known before any batch (they become metrics)."""

    @abc.abstractmethod
    def loss_terms(self, context: BatchContext, hyperparameters: Hyperparameters) -> dict[str, LossTerm]:
        """The loss of one batch as named, weighted terms (see `LossTerm`)."""

    # --- hyperparameters -------------------------------------------------------------------------------

    def hyperparameter_names(self) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(self.hyperparameters))

    def defaults(self) -> dict:
        """The method's hyperparameters at their defaults (a preset's own defaults included)."""
        return self.make_hyperparameters().to_dict()

    def make_hyperparameters(self, **values) -> Hyperparameters:
        """The method's hyperparameters: its defaults, overridden by `values`.

        Raises:
            ValueError: For a name that is not one of this method's
                hyperparameters, or a value the method cannot use.
        """
        names = self.hyperparameter_names()
        values = {**self.default_overrides, **values}
        unknown = [name for name in values if name not in names]
        if unknown:
            received = ", ".join(f"{name}={values[name]!r}" for name in unknown)
            listed = ", ".join(names) if names else "none"
            raise ValueError(
                f"Method {self.name!r} has no hyperparameter `{unknown[0]}` (its hyperparameters: {listed}). Received: "
                f"{received}"
            )
        return self.hyperparameters(**values)

    def __repr__(self) -> str:
        return f"<DistillationMethod {self.name!r}>"
