"""Progress for otherwise silent passes over a split: validation inside `fit`, evaluation, the teacher's check.

Keras's `fit` shows no progress while it validates (its progress bar only
follows evaluation called on its own), and `evaluate(verbose=0)` shows none.
`PassProgress` is a Keras callback (and can be driven by hand, for a runtime's
own loop) that stays silent for a pass that ends within `delay` seconds and
otherwise shows Keras's progress bar on a terminal, or one line with the
estimated time on a log file, so a long pass never looks like a hang.
"""

from __future__ import annotations

import math
import sys
import time

import keras

# A pass that ends within this many seconds shows nothing.
DELAY_SECONDS = 3.0


def batches(num_examples: int, batch_size: int) -> int:
    """How many batches a pass over `num_examples` in batches of `batch_size` takes (the last one may be short)."""
    return max(1, math.ceil(num_examples / batch_size))


class PassProgress(keras.callbacks.Callback):
    """Shows how far a pass over `steps` batches has got, once it has run `delay` seconds.

    Args:
        steps: Batches in the pass.
        label: What the pass is, e.g. "Validating on 10,000 test images".
        log: Writes a line (for the estimate on a non-terminal).
        delay: Seconds of silence allowed before anything is shown (default `DELAY_SECONDS`).
        stream: Where the progress bar goes; its `isatty()` picks the bar or the one line.
        clock: The time source (tests pass their own).
    """

    def __init__(
        self, steps: int, label: str, log=print, delay: float | None = None, stream=None, clock=time.monotonic
    ):
        super().__init__()
        self.steps, self.label, self.log, self.clock = int(steps), label, log, clock
        self.delay = DELAY_SECONDS if delay is None else delay
        self.stream = stream or sys.stdout
        self._started = None
        self._bar = None
        self._announced = False

    def _interactive(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def on_test_begin(self, logs=None):
        self._started, self._bar, self._announced = self.clock(), None, False

    def on_test_batch_end(self, batch, logs=None):
        if self._started is None:
            self.on_test_begin()
        done = batch + 1
        elapsed = self.clock() - self._started
        if elapsed < self.delay or done >= self.steps:
            return
        if self._interactive():
            if self._bar is None:
                self.stream.write(f"\n{self.label}\n")
                self._bar = keras.utils.Progbar(self.steps, interval=0.5, unit_name="step")
            self._bar.update(done)
        elif not self._announced:
            left = elapsed / done * (self.steps - done)
            self.log(f"{self.label}: {done} of {self.steps} batches in {elapsed:.0f} s, about {left:.0f} s left.")
            self._announced = True

    def on_test_end(self, logs=None):
        if self._bar is not None:
            self._bar.update(self.steps, finalize=True)
        self._started = None
