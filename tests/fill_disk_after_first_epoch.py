"""Runs the command line with its file system made full right after epoch 1's checkpoint is committed.

The moment a real disk fills mid-run, reached on purpose: `python tests/fill_disk_after_first_epoch.py FILLER
ARGS...` runs `stkd-keras ARGS...`, and once the first epoch is committed writes FILLER until the file system
holding it refuses another byte. Used by tests/test_run_safety.py and benchmarks/hostile_cases.py, on a small
tmpfs mounted for the purpose.
"""

import sys

from stkd_keras import checkpoints
from stkd_keras.cli.main import cli

filler, arguments = sys.argv[1], sys.argv[2:]
commit = checkpoints.RunCheckpoint.on_epoch_end


def commit_then_fill(self, epoch, logs=None):
    commit(self, epoch, logs)
    if epoch == 0:
        with open(filler, "wb") as f:
            for block in (1 << 16, 1 << 10, 1):
                try:
                    while True:
                        f.write(b"\0" * block)
                        f.flush()
                except OSError:
                    pass


checkpoints.RunCheckpoint.on_epoch_end = commit_then_fill
cli.main(arguments, prog_name="stkd-keras")
