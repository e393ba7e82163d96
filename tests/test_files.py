import pytest

from stkd_keras.files import atomic_write, restored_on_failure


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


def test_files_written_as_one_set_are_put_back_when_the_block_fails(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.png"
    old.write_text("before")
    with pytest.raises(OSError, match="disk full"), restored_on_failure(old, new):
        old.write_text("after")
        new.write_text("drawn")
        raise OSError("disk full")
    assert old.read_text() == "before" and not new.exists()  # the old bytes back, the new file gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # no temporary left either
    with restored_on_failure(old, new):  # a block that finishes keeps what it wrote
        old.write_text("after")
        new.write_text("drawn")
    assert old.read_text() == "after" and new.read_text() == "drawn"
