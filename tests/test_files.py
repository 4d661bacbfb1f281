"""ginformer.files: what it refuses is the user's input, named as such (a GinformerError: one line from the CLI),
and still the built-in error a caller outside ginformer catches."""

import os

import pytest

from ginformer.errors import DataError, GinformerError, OutputInTheWay
from ginformer.files import check_output_dir, check_output_file, decode_text, read_text_file, refuse_special_file


def test_an_input_that_is_a_named_pipe_or_not_utf8_is_a_data_error(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(DataError, match=r"data file .*pipe.jsonl is a named pipe, not a regular file"):
        refuse_special_file(tmp_path / "pipe.jsonl", "data file")
    refuse_special_file(tmp_path / "missing.jsonl", "data file")  # a missing file is for the reader to name
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: line 2, byte 6: not UTF-8 text"):
        read_text_file(tmp_path / "latin1.txt")
    assert decode_text("\ufeffé".encode(), "x") == "é"
    with pytest.raises(ValueError):  # what callers that know no ginformer catch
        decode_text(b"\xff", "x")


def test_an_output_blocked_by_a_file_a_directory_a_pipe_or_an_input_is_output_in_the_way(tmp_path):
    (tmp_path / "blocker").write_text("")
    (tmp_path / "input.txt").write_text("")
    os.mkfifo(tmp_path / "pipe")
    cases = [
        (lambda: check_output_dir(tmp_path / "blocker", "--out"), "--out .*blocker is a file, not a directory"),
        (lambda: check_output_dir(tmp_path / "blocker" / "sub", "--out"), "blocker is a file, not a directory"),
        (lambda: check_output_file(tmp_path, "output file"), "is a directory: name a file"),
        (lambda: check_output_file(tmp_path / "pipe", "output file"), "pipe is a named pipe, not a regular file"),
        (lambda: check_output_file(tmp_path / "input.txt", "output file", inputs=[tmp_path / "input.txt"]),
         "is also the input"),
    ]
    for check, message in cases:
        with pytest.raises(OutputInTheWay, match=message) as err:
            check()
        assert isinstance(err.value, FileExistsError) and isinstance(err.value, GinformerError)
    check_output_file(tmp_path / "new" / "result.json", "output file")  # missing folders are created later: fine
