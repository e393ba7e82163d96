"""TensorFlow's `tf.distribute` strategies for training, and the mend that lets Keras 3 fit under the multi-worker one.

- `default`: TensorFlow's default strategy (one device).
- `mirrored`: `tf.distribute.MirroredStrategy` over all local GPUs.
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy` over the
  workers named in the `TF_CONFIG` environment variable. Every worker runs
  the same command; the chief (task `chief`, or `worker` 0 when there is
  none) writes the run folder and the others train into a temporary folder.

`stkd_keras.distribution.setup` picks these on TensorFlow, and
`stkd_keras.jax_data_parallel` on JAX.

Keras 3 (up to 3.15 at least) fails `fit` under MultiWorkerMirroredStrategy
(keras-team/keras#20585) in two places, both in the TensorFlow trainer:
1. `_maybe_symbolic_build` asks the strategy for the MEAN of the first input
   batch across workers only to learn its shapes; the collective reduce of a
   `PerReplica` input raises "Attempt to convert a value (PerReplica...)".
2. `reduce_per_replica` reduces every metric with `strategy.reduce("MEAN", v,
   axis=0)`, and Keras 3 metrics are scalars ("Invalid reduction dimension 0").
`enable_multi_worker_fit` mends both for the multi-worker case only: shapes
come from this worker's first replica, and scalars are reduced with axis=None.
Every other strategy takes Keras's own path unchanged. The values the
workers report are equal to one device's on the same global batch (tested in
tests/test_multi_worker.py with two worker processes on localhost).
"""

from __future__ import annotations

import json
import os

from stkd_keras.backend_selection import STRATEGIES

_multi_worker_strategy = None


def _tf_config() -> dict | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
        config["task"]["type"], int(config["task"]["index"])  # noqa: B018
        hosts = config["cluster"].get("worker") or config["cluster"].get("chief")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"TF_CONFIG is not a cluster description ({type(error).__name__}: {error}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}.'
        ) from None
    if not hosts:
        raise ValueError("TF_CONFIG names no `worker` or `chief` hosts in its `cluster`.")
    return config


def cluster_task() -> tuple[str, int] | None:
    """This process's (task type, index) from TF_CONFIG, or None when TF_CONFIG is unset."""
    config = _tf_config()
    return None if config is None else (str(config["task"]["type"]), int(config["task"]["index"]))


def is_chief() -> bool:
    """Whether this process writes results: the chief task, worker 0 when there is none, or a process in no cluster."""
    task = cluster_task()
    if task is None:
        return True
    return task[0] == "chief" or (task == ("worker", 0) and "chief" not in _tf_config()["cluster"])


def get_strategy(name: str):
    """The `tf.distribute.Strategy` called `name` (one of STRATEGIES).

    The multi-worker strategy is created once per process (TensorFlow allows
    one) and must be created before the process runs any TensorFlow op.
    """
    import tensorflow as tf

    global _multi_worker_strategy
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if _multi_worker_strategy is None:
            if cluster_task() is None:
                raise ValueError(
                    "--strategy multi_worker needs TF_CONFIG to name the cluster and this worker's task; see the "
                    "README."
                )
            enable_multi_worker_fit()
            try:
                _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as error:
                raise ValueError(f"Cannot start MultiWorkerMirroredStrategy: {error}") from None
        return _multi_worker_strategy
    raise ValueError(f"Expected `strategy` in {STRATEGIES}. Received: strategy={name!r}")


def enable_multi_worker_fit() -> None:
    """Mends Keras 3's `fit` for MultiWorkerMirroredStrategy (see the module docstring); idempotent."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_stkd_multi_worker_fit", False):
        return
    if not all(
        hasattr(trainer, name) for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker")
    ) or not hasattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build"):
        raise ValueError(
            "This Keras version's trainer is not the one stkd-keras mends for multi-worker training; use Keras 3.15."
        )
    multi_worker = trainer._collective_all_reduce_multi_worker
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None or self._distribute_strategy is None or not multi_worker(self._distribute_strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        strategy = self.distribute_strategy
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda x: (
                    strategy.experimental_local_results(x)[0] if isinstance(x, tf.distribute.DistributedValues) else x
                ),
                next(batches),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._stkd_multi_worker_fit = True
