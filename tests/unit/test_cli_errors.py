"""Every error the CLI prints names what it is about: an OS error without a file name (the
working directory vanished) says which call raised it."""

from __future__ import annotations

import os

from polymodal import cli


def test_an_os_error_without_a_file_says_where_it_was_raised(tmp_path, monkeypatch, capsys):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()

    def relative(args) -> int:
        return len(os.path.relpath("/somewhere"))  # os.getcwd() inside: FileNotFoundError

    monkeypatch.setattr(cli.commands, "cmd_report", relative)
    assert cli.main(["report", "runs/r"]) == 2
    err = capsys.readouterr().err
    assert "No such file or directory (in abspath, " in err, err
    named = FileNotFoundError(2, "No such file or directory", "data/x.parquet")
    assert cli._where(named) == ""  # the message already names the file
