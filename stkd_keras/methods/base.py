"""What a distillation method is, the batch context its loss reads, and the registry of methods.

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

`forward` runs the networks of one training step as a method declares and
`batch_context` assembles what its loss reads; the `Distiller` and the
QAT/pruning bridge both go through them. A preset (`register_preset`) is a
registered method with other defaults, e.g. STKD with its clean-image KD term
switched on.

The registry and the method declarations import no Keras: the command line
lists methods and their options before a Keras backend is chosen. What runs
inside a step (`forward`, `batch_context`, the methods' loss terms) imports
Keras when it is called.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import typing
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
    _default_overrides: Mapping[str, Any] = {}

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
        values = {**self._default_overrides, **values}
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


# --- registry ------------------------------------------------------------------------------------------

_REGISTRY: dict[str, DistillationMethod] = {}


# Hyperparameters share one flat namespace with a run's settings (`RunConfig.to_dict`, recipes, the command line's
# options) and with the Distiller's own arguments: a hyperparameter named like one of these would silently replace it.
# The RunConfig fields, the recipe fields (`stkd_keras.recipes.EXTRA_FIELDS`) and the Distiller's arguments;
# tests/test_methods.py checks the set against them.
RESERVED_NAMES = frozenset(
    {
        "dataset",
        "model",
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
        "teacher_model",
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
    preset._default_overrides = {**base._default_overrides, **defaults}
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


# --- one step ------------------------------------------------------------------------------------------


def teacher_logits(teacher, images):
    """The frozen teacher's float32 logits, outside the gradient."""
    from keras import ops

    return ops.stop_gradient(ops.cast(teacher(images, training=False), "float32"))


def forward(method: DistillationMethod, hyperparameters, images, student, teacher=None, seed=None) -> dict:
    """Runs the networks of one training step as `method` declares.

    The mixup draw comes first (lambda, then the permutation), then the
    teacher, the student on what it sees and, where the method asks, the
    student on the clean batch. Where the hyperparameters have a
    `mix_fraction` < 1, only the first round(mix_fraction * batch) samples
    are mixed (`mixup.mix_only_first`: lambda becomes per-sample, 1 for the
    samples left clean, so `batch_context` leaves their labels clean too);
    no further random numbers are drawn, and at 1 the step is unchanged.
    The teacher sees the clean or the mixed batch per
    `method.teacher_input(hyperparameters)`.

    Args:
        method: A `DistillationMethod`.
        hyperparameters: Its `Hyperparameters`.
        images: The clean batch.
        student: A callable `student(images, training=True)` returning logits.
        teacher: A callable model returning logits, or None.
        seed: The `keras.random.SeedGenerator` of the mixup draws.

    Returns:
        A dict: `logits` (student), and where they apply `teacher_logits`,
        `clean_logits`, `clean_teacher_logits`, `lam`, `permutation`.
    """
    from keras import ops

    from stkd_keras import mixup as mixup_lib

    outputs = {}
    student_images = images
    if method.mixes:
        batch_size = ops.shape(images)[0]
        lam, permutation = mixup_lib.draw(
            batch_size, hyperparameters.mixup_alpha, hyperparameters.lambda_per_sample, seed
        )
        mix_fraction = getattr(hyperparameters, "mix_fraction", 1.0)
        if mix_fraction < 1:
            lam = mixup_lib.mix_only_first(lam, batch_size, mix_fraction)
        student_images = mixup_lib.mix(images, lam, permutation)
        outputs["lam"], outputs["permutation"] = lam, permutation
    teacher_input = method.teacher_input(hyperparameters) if method.needs_teacher else None
    if method.needs_teacher:
        if teacher_input not in TEACHER_INPUTS:
            raise ValueError(
                f"Expected {type(method).__name__}.teacher_input() to return one of {TEACHER_INPUTS}. Received: "
                f"{teacher_input!r}"
            )
        outputs["teacher_logits"] = teacher_logits(teacher, student_images if teacher_input == "mixed" else images)
    outputs["logits"] = student(student_images, training=True)
    if method.uses_clean_logits(hyperparameters):
        outputs["clean_logits"] = student(images, training=True)
        if method.needs_teacher:
            outputs["clean_teacher_logits"] = (
                outputs["teacher_logits"]
                if teacher_input == "clean" or not method.mixes
                else teacher_logits(teacher, images)
            )
    return outputs


def batch_context(labels, outputs: dict, sample_weight=None, epoch=0, step=0, training: bool = True) -> BatchContext:
    """A `BatchContext` from one-hot `labels` and what `forward` returned (training) or the clean logits (evaluation).

    In training, the labels and sample weights are mixed with the draw in
    `outputs`. In evaluation pass `{"logits": ..., "teacher_logits": ...}` of
    the clean batch: the clean logits are then those same logits.
    """
    from keras import ops

    from stkd_keras import mixup as mixup_lib

    labels = ops.cast(labels, "float32")
    lam, permutation = outputs.get("lam"), outputs.get("permutation")
    mixed_labels, mixed_weight = labels, sample_weight
    if lam is not None:
        mixed_labels = mixup_lib.mix(labels, lam, permutation)
        if sample_weight is not None:
            mixed_weight = mixup_lib.mix(ops.cast(sample_weight, "float32"), lam, permutation)
    return BatchContext(
        labels=mixed_labels,
        student_logits=outputs["logits"],
        teacher_logits=outputs.get("teacher_logits"),
        clean_labels=labels,
        clean_student_logits=outputs.get("clean_logits") if training else outputs["logits"],
        clean_teacher_logits=outputs.get("clean_teacher_logits") if training else outputs.get("teacher_logits"),
        lam=lam,
        permutation=permutation,
        sample_weight=mixed_weight,
        epoch=epoch,
        step=step,
        training=training,
    )


def total_loss(terms: Mapping[str, LossTerm]):
    """sum(weight * value) over the terms, in their order."""
    total = None
    for term in terms.values():
        weighted = (
            term.value if isinstance(term.weight, (int, float)) and term.weight == 1 else term.weight * term.value
        )
        total = weighted if total is None else total + weighted
    if total is None:
        raise ValueError("A method's loss_terms() returned no terms.")
    return total


class StepLoss(NamedTuple):
    """One step's loss: `total` (float32: the weighted terms plus regularisation) and the method's named `terms`."""

    total: Any
    terms: dict


def one_hot_labels(labels, num_classes: int):
    """Integer labels (batch,) or (batch, 1) as one-hot float32; one-hot labels (batch, num_classes) cast to float32."""
    from keras import ops

    if len(labels.shape) == 2 and labels.shape[-1] == num_classes:
        return ops.cast(labels, "float32")
    if len(labels.shape) == 2 and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    if len(labels.shape) != 1:
        raise ValueError(
            f"Expected labels of shape (batch,) or (batch, {num_classes}). Received: labels.shape={tuple(labels.shape)}"
        )
    return ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype="float32")


def outputs_loss(
    method,
    hyperparameters,
    labels,
    outputs: dict,
    sample_weight=None,
    epoch=0,
    step=0,
    training: bool = True,
    regularization_losses=(),
) -> StepLoss:
    """The loss of a step from what `forward` returned (training) or the clean logits (evaluation).

    `outputs` is in the form `batch_context` takes. The one place a step's
    loss is put together, for the `Distiller` and for
    the QAT and pruning fine-tuning (`stkd_keras.export.tfmot_bridge`):
    the method's terms on the batch's context (labels one-hot or integer;
    `epoch` and `step` drive warm-ups such as DKD's), checked against the
    names it declared, summed with their weights, plus `regularization_losses`
    (the model's `losses`: weight regularizers and `add_loss` terms).
    """
    from keras import ops

    method = get_method(method)  # a name, or the method itself
    context = batch_context(
        one_hot_labels(labels, outputs["logits"].shape[-1]),
        outputs,
        sample_weight,
        epoch=epoch,
        step=step,
        training=training,
    )
    terms = dict(method.loss_terms(context, hyperparameters))
    declared = set(method.term_names(hyperparameters))
    if set(terms) != declared:
        raise ValueError(
            f"Method {method.name!r} returned loss terms {sorted(terms)}, but its term_names() declared "
            f"{sorted(declared)}."
        )
    total = total_loss(terms)
    regularization_losses = list(regularization_losses)
    if regularization_losses:
        total = total + ops.cast(ops.sum(regularization_losses), "float32")
    return StepLoss(total, terms)


def step_loss(
    method,
    hyperparameters,
    images,
    labels,
    student,
    teacher=None,
    seed=None,
    epoch=0,
    step=0,
    sample_weight=None,
    regularization_losses=None,
) -> StepLoss:
    """One training step's loss: `forward` (the mixup draw from `seed`, the teacher, the student) then `outputs_loss`.

    `regularization_losses` defaults to the student's own `losses`, read after
    its forward pass. Usable with any callable models Keras's ops accept,
    tf_keras ones included on the TensorFlow backend.
    """
    method = get_method(method)  # a name, or the method itself
    outputs = forward(method, hyperparameters, images, student, teacher, seed)
    if regularization_losses is None:
        regularization_losses = student.losses
    return outputs_loss(
        method, hyperparameters, labels, outputs, sample_weight, epoch, step, True, regularization_losses
    )
