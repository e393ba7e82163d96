"""One step of a distillation method: the networks it runs, the context its loss reads, and the loss.

`forward` runs the networks of one training step as a method declares and
`batch_context` assembles what its loss reads; `outputs_loss` and `step_loss`
put the step's loss together. The `Distiller` and the QAT/pruning fine-tuning
both go through them, so a method trains the same in both. Keras is imported
when a function here is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from stkd_keras.methods.base import TEACHER_INPUTS, BatchContext, DistillationMethod, LossTerm
from stkd_keras.methods.registry import get_method


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
    the QAT and pruning fine-tuning (`stkd_keras.export.tfmot_fine_tune`):
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
