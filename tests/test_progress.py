"""Passes over a split that took tens of seconds without a word (validation inside a JAX or PyTorch fit, evaluate,
the teacher's measurement) show how far they have got; a short pass, and --quiet, show nothing."""

import io

from stkd_keras import progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def drive(callback, clock, seconds_per_batch):
    callback.on_test_begin()
    for batch in range(callback.steps):
        clock.now += seconds_per_batch
        callback.on_test_batch_end(batch)
    callback.on_test_end()


def test_a_slow_pass_on_a_log_says_once_how_long_it_will_take():
    lines, clock = [], Clock()
    slow = progress.PassProgress(
        10, "Validating on 2,560 test images", lines.append, delay=3, stream=io.StringIO(), clock=clock
    )
    drive(slow, clock, seconds_per_batch=1.0)
    # 3 s after the start, 3 of 10 batches done: 1 s a batch, 7 batches left.
    assert lines == ["Validating on 2,560 test images: 3 of 10 batches in 3 s, about 7 s left."]
    lines.clear()
    drive(
        progress.PassProgress(10, "Quick", lines.append, delay=3, stream=io.StringIO(), clock=clock),
        clock,
        seconds_per_batch=0.2,
    )
    assert lines == []  # 2 s in all: under the delay


def test_a_slow_pass_on_a_terminal_shows_the_keras_progress_bar(capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, lines, clock = Terminal(), [], Clock()
    drive(
        progress.PassProgress(
            4, "Evaluating on 1,024 test images", lines.append, delay=1, stream=terminal, clock=clock
        ),
        clock,
        1.0,
    )
    assert terminal.getvalue() == "\nEvaluating on 1,024 test images\n" and lines == []
    assert "4/4" in capsys.readouterr().out  # Keras's Progbar, finished at the pass's end


def test_progress_batches():
    assert progress.batches(10000, 256) == 40 and progress.batches(600, 256) == 3 and progress.batches(0, 256) == 1


def test_validation_inside_fit_reaches_the_callback_on_every_backend():
    """Keras's fit shows nothing while it validates; the callback sees each validation batch (run on JAX and PyTorch
    too by tests/test_backends.py), so the silent minute after a JAX or PyTorch epoch shows its progress."""
    import numpy as np

    from stkd_keras import Distiller
    from stkd_keras.models import small_cnn

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((96, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 96)
    distiller = Distiller(small_cnn(4, (28, 28, 1), 10), method="ce")
    distiller.compile(optimizer="sgd")
    lines = []
    follow = progress.PassProgress(
        progress.batches(96, 32), "Validating on 96 test images", lines.append, delay=0, stream=io.StringIO()
    )
    distiller.fit(
        x, y, batch_size=32, epochs=2, validation_data=(x, y), validation_batch_size=32, callbacks=[follow], verbose=0
    )
    # One line per validation pass (two epochs), after its first of three batches.
    assert len(lines) == 2 and all(line.startswith("Validating on 96 test images: 1 of 3 batches in") for line in lines)
