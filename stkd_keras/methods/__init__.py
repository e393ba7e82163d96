"""Distillation methods, one module each, registered by name.

    from stkd_keras.methods import get_method, list_methods

    list_methods()
    # ('ce', 'kd', 'kd+ls', 'mixup', 'kd_mixup_naive', 'stkd', 'stkd_clean_kd', 'dkd', 'dkd+ls', 'stkd+ls')
    stkd = get_method("stkd")
    stkd.needs_teacher, stkd.mixes, stkd.teacher_sees   # True, True, 'mixed'
    stkd.make_hyperparameters(temperature=2.0)          # STKDHyperparameters(temperature=2.0, ...)

Every module of this package is imported here and registers its methods, so
a new method is one new file (see `base.py` for what a method declares, `registry.py` and `step.py`, and
the README's "Adding a method"). A method defined in your own code registers
itself the same way, with `@register_method`, before a `Distiller` or the
command line asks for it by name.
"""

import importlib
import pkgutil

from stkd_keras.methods.base import BatchContext, DistillationMethod, Hyperparameters, LossTerm
from stkd_keras.methods.registry import (
    RESERVED_NAMES,
    check_teacher,
    get_method,
    hyperparameter_fields,
    hyperparameter_type,
    list_methods,
    methods_with,
    non_default,
    register_method,
    register_preset,
    unregister_method,
)
from stkd_keras.methods.step import (
    StepLoss,
    batch_context,
    forward,
    one_hot_labels,
    outputs_loss,
    step_loss,
    teacher_logits,
    total_loss,
)

# The built-in methods first, in the order the README's tables list them; then every other module.
_BUILT_IN = ("ce", "kd", "mixup", "kd_mixup_naive", "stkd", "dkd")
for _name in (*_BUILT_IN, *sorted(module.name for module in pkgutil.iter_modules(__path__))):
    if _name not in ("base", "registry", "step"):  # what a method is, the registry, the step: no methods
        importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "RESERVED_NAMES",
    "BatchContext",
    "DistillationMethod",
    "Hyperparameters",
    "LossTerm",
    "StepLoss",
    "batch_context",
    "check_teacher",
    "forward",
    "get_method",
    "hyperparameter_fields",
    "hyperparameter_type",
    "list_methods",
    "methods_with",
    "non_default",
    "one_hot_labels",
    "outputs_loss",
    "register_method",
    "register_preset",
    "step_loss",
    "teacher_logits",
    "total_loss",
    "unregister_method",
]
