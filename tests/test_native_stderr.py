"""Which lines `filtered_stderr` drops: TensorFlow's and LiteRT's native start-up noise, never a real error."""

import os

from stkd_keras import native_stderr


def test_start_up_lines_are_noise_and_real_errors_are_kept():
    assert native_stderr._is_native_noise(
        "I0000 00:00:1796015667.257494 762 port.cc:153] oneDNN custom operations are on.", False
    )
    assert native_stderr._is_native_noise(
        "E0000 00:00:17.99 848 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error", False
    )
    # With an NVIDIA driver present, a failed cuInit is a real error; other errors are always kept.
    assert not native_stderr._is_native_noise(
        "E0000 00:00:17.99 848 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error", True
    )
    assert not native_stderr._is_native_noise("E0000 00:00:17.99 848 some.cc:1] Out of memory", False)


def test_filtered_stderr_writes_back_all_but_the_noise(capfd):
    with native_stderr.filtered_stderr():
        os.write(2, b"I0000 00:00:1.5 7 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1.5 7 some.cc:1] Out of memory\n")
    assert capfd.readouterr().err == "E0000 00:00:1.5 7 some.cc:1] Out of memory\n"
