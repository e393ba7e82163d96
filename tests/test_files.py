import pytest

from stkd_keras.files import atomic_write


def test_atomic_write_replaces_only_when_the_writer_finishes(tmp_path):
    path = tmp_path / "epoch-3.weights.h5"
    seen = []
    atomic_write(path, lambda temporary: (seen.append(temporary.name), temporary.write_text("new")))
    assert path.read_text() == "new" and seen[0].endswith(
        "-epoch-3.weights.h5"
    )  # writers that check the suffix accept it

    def fails(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fails)
    assert path.read_text() == "new"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-3.weights.h5"]  # and no temporary is left
