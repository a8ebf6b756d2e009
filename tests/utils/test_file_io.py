"""maskclip_d2.utils.file_io.atomic_write: a file appears whole or not at all, through a
temporary file of its own beside it, so two writers of one path never share one."""
import os
import stat

import pytest

from maskclip_d2.utils import atomic_write, write_json_atomic


def test_two_writers_of_one_path_each_get_their_own_temporary_file(tmp_path):
    path = tmp_path / "result.json"
    with atomic_write(str(path)) as first:
        with atomic_write(str(path)) as second:
            assert first != second
            assert os.path.dirname(first) == os.path.dirname(second) == str(tmp_path)
            with open(first, "w") as f:
                f.write("first")
            with open(second, "w") as f:
                f.write("second")
        assert path.read_text() == "second"
    assert path.read_text() == "first"  # the last to finish wins, whole
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_leftover_partial_file_is_neither_used_nor_removed(tmp_path):
    path = tmp_path / "result.json"
    leftover = tmp_path / "result.json.partial"  # an interrupted writer's, or the user's
    leftover.write_text("someone else's")
    write_json_atomic({"a": 1}, str(path))
    assert path.read_text() == '{"a": 1}'
    assert leftover.read_text() == "someone else's"
    assert sorted(os.listdir(tmp_path)) == ["result.json", "result.json.partial"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["result.json"]


def test_the_file_gets_the_permissions_of_an_ordinary_new_file(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json_atomic([], str(tmp_path / "new" / "result.json"))  # the folder is created
        with open(tmp_path / "plain.json", "w") as f:
            f.write("[]")
    finally:
        os.umask(umask)
    mode = stat.S_IMODE(os.stat(tmp_path / "new" / "result.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode) == 0o644
