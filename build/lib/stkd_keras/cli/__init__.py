"""The `stkd-keras` command line (installed as `stkd_keras.cli`)."""
