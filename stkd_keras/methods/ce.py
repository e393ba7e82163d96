"""`ce`: the student alone, cross-entropy on the clean images (no teacher, no hyperparameters)."""

from __future__ import annotations

from stkd_keras.methods.base import BatchContext, DistillationMethod, Hyperparameters, LossTerm
from stkd_keras.methods.registry import register_method


def cross_entropy(context: BatchContext):
    """Batch mean of CE(labels, softmax(student logits)), weighted by the sample weights; labels may be mixed."""
    from stkd_keras import losses

    return losses.batch_mean(losses.soft_cross_entropy(context.labels, context.student_logits), context.sample_weight)


@register_method
class CrossEntropy(DistillationMethod):
    """CE(y, z_s(x))."""

    name = "ce"
    description = "student alone, cross-entropy on clean images (no teacher)"
    hyperparameters = Hyperparameters

    def term_names(self, hyperparameters):
        return ("ce_loss",)

    def loss_terms(self, context, hyperparameters):
        return {"ce_loss": LossTerm(cross_entropy(context))}
