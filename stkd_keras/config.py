"""The configuration of a training run: `RunConfig`.

Written out, it is what a run folder's `metrics.json` and `run.json` record
and what recipes hold. Nothing here imports Keras, so the command line can
read a run's config (to resume it on the backend it started on) before a
backend is chosen.
"""

from __future__ import annotations

import dataclasses

from stkd_keras import methods as methods_lib
from stkd_keras.backend_selection import STRATEGIES

# The zoo's names, known without importing Keras (so the CLI checks --model at once);
# tests/test_zoo.py checks them against `stkd_keras.models.list_models()`.
MODEL_NAMES = (
    *(f"resnet{depth}" for depth in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    *(f"wrn_{depth}_{width}" for depth in (16, 40) for width in (1, 2)),
    *(f"vgg{depth}" for depth in (8, 11, 13, 16, 19)),
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "ResNet18",
    "ResNet50",
    *(f"cnn{width}" for width in (8, 16, 32)),
)


@dataclasses.dataclass
class RunConfig:
    """Everything that determines a training run (saved in `metrics.json`).

    `validation_holdout` validates on that many training images set apart
    (never trained on) instead of the test split (`stkd_keras.data.load`'s
    `holdout`), to choose settings without reading the test split.

    `model` names the architecture (`stkd_keras.architectures`: a zoo name, a keras.applications name, a .keras
    file or module:function) and `weights` the file its training starts from (None: fresh weights).

    `method_options` holds the method's hyperparameters given for this run;
    the others take the method's defaults (`stkd_keras.methods`). Written out
    (`to_dict`, in metrics.json and run.json) the config is one flat mapping
    in which the method's resolved hyperparameters stand beside the other
    fields, as recipes write them.
    """

    dataset: str = "fashion_mnist"
    model: str = "resnet8"
    weights: str | None = None
    method: str = "ce"
    teacher: str | None = None
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    method_options: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    train_subset: int | None = None
    val_subset: int | None = None
    validation_holdout: int | None = None
    steps_per_epoch: int | None = None
    jit_compile: bool = False
    mixed_precision: bool = False
    data_dir: str | None = None
    download: bool = True
    image_size: int | None = None
    optimizer: str = "sgd"
    lr_schedule: str = "cosine"
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_rate: float = 0.1
    deterministic: bool = False
    strategy: str = "default"

    def validate(self) -> None:
        """Raises `ValueError` for a value no run can use."""
        from stkd_keras import architectures

        architectures.check_weights_option(self.model, self.weights)  # and that `model` names an architecture
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected `{name}` to be an int >= 1. Received: {name}={value!r}")
        for name in ("train_subset", "val_subset", "validation_holdout", "steps_per_epoch", "image_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Expected `{name}` to be an int >= 1 or unset. Received: {name}={value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"Expected `learning_rate` > 0. Received: learning_rate={self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"Expected 0 <= `momentum` < 1. Received: momentum={self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"Expected `weight_decay` >= 0. Received: weight_decay={self.weight_decay!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"Expected `optimizer` in ('sgd', 'adam'). Received: optimizer={self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ValueError(
                f"Expected `lr_schedule` in ('cosine', 'step', 'constant'). Received: lr_schedule={self.lr_schedule!r}"
            )
        epochs = list(self.lr_decay_epochs)
        if self.lr_schedule == "step" and (
            not epochs or epochs != sorted(set(epochs)) or not 0 < epochs[0] or epochs[-1] >= self.epochs
        ):
            raise ValueError(
                f"Expected increasing `lr_decay_epochs` between 1 and epochs - 1 = {self.epochs - 1} for the step "
                "schedule. "
                f"Received: lr_decay_epochs={self.lr_decay_epochs!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Expected `strategy` in {STRATEGIES}. Received: strategy={self.strategy!r}")
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"Expected 0 < `lr_decay_rate` <= 1. Received: lr_decay_rate={self.lr_decay_rate!r}")
        # The Distiller checks these too; checking here refuses a bad run before any data is read.
        self.hyperparameters()

    def hyperparameters(self) -> methods_lib.Hyperparameters:
        """The method's hyperparameters: `method_options` over the method's defaults; `ValueError` for bad ones."""
        return methods_lib.get_method(self.method).make_hyperparameters(**self.method_options)

    def to_dict(self) -> dict:
        """The config as one flat mapping, the method's hyperparameters resolved beside the other fields."""
        fields = dataclasses.asdict(self)
        del fields["method_options"]
        return {**fields, **self.hyperparameters().to_dict()}

    @classmethod
    def from_dict(cls, fields: dict) -> RunConfig:
        """The inverse of `to_dict`; also reads configs written before methods were units.

        Those held every method's hyperparameters as top-level fields, also
        for methods without them (a `ce` run had a temperature): a field that
        is a hyperparameter of some registered method goes to
        `method_options` when the run's method has it, and is dropped when
        it has not.
        """
        fields = dict(fields)
        own = {field.name for field in dataclasses.fields(cls)}
        method = methods_lib.get_method(fields.get("method", cls.method))
        options = dict(fields.pop("method_options", None) or {})
        for name in methods_lib.hyperparameter_fields():
            if name in fields and name not in own:
                value = fields.pop(name)
                if name in method.hyperparameter_names():
                    options.setdefault(name, value)
        unknown = sorted(set(fields) - own)
        if unknown:
            raise ValueError(f"Unknown run config field `{unknown[0]}`. Valid fields: {', '.join(sorted(own))}.")
        fields["lr_decay_epochs"] = tuple(fields.get("lr_decay_epochs") or ())
        return cls(**fields, method_options=options)


def teacher_config_for(
    config: RunConfig, model: str, epochs: int | None = None, weights: str | None = None
) -> RunConfig:
    """The config of the teacher `distill` trains first when none is given: the student's run, with cross-entropy."""
    return dataclasses.replace(
        config,
        model=model,
        weights=weights,
        method="ce",
        method_options={},
        teacher=None,
        epochs=epochs or config.epochs,
        lr_decay_epochs=config.lr_decay_epochs if config.lr_schedule == "step" else (),
    )
