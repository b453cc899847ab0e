"""Every error the CLI prints is one line naming what it is about (an unexpected one: its
traceback in a log file, or printed under --verbose); an OS error without a file name (the
working directory vanished) says which call raised it."""

from __future__ import annotations

import os

import pytest

from polymodal import cli, cli_errors


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
    assert cli_errors._where(named) == ""  # the message already names the file


def _raising(exc: BaseException):
    def command(args) -> int:
        raise exc

    return command


def test_an_unexpected_error_is_one_line_and_its_traceback_a_log_file(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cli.commands, "cmd_report", _raising(KeyError("the cause\nmore lines")))
    assert cli.main(["report", "runs/r"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("polymodal: error: KeyError: 'the cause") and "--verbose" in err
    log = err.split("the traceback is in ")[1].split(";")[0]
    assert log.startswith(str(tmp_path / "polymodal" / "errors"))
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "KeyError" in text


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_prints_the_traceback(where, monkeypatch, capsys):
    monkeypatch.setattr(cli.commands, "cmd_report", _raising(RuntimeError("boom")))
    argv = ["--verbose", "report", "r"] if where == "before" else ["report", "r", "--verbose"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err


def test_a_known_error_from_a_ray_task_shows_its_cause_only(monkeypatch, capsys):
    class RemoteError(ValueError):  # as Ray's RayTaskError(ValueError): remote traceback + cause
        def __init__(self):
            super().__init__("ray::task() (pid=1)\n  File 'x.py', line 3\nValueError: bad row")
            self.cause = ValueError("data/x.parquet row 7: bad row")

    monkeypatch.setattr(cli.commands, "cmd_report", _raising(RemoteError()))
    assert cli.main(["report", "r"]) == 2
    assert capsys.readouterr().err == "polymodal: error: data/x.parquet row 7: bad row\n"


def test_ctrl_c_exits_130(monkeypatch, capsys):
    monkeypatch.setattr(cli.commands, "cmd_report", _raising(KeyboardInterrupt()))
    assert cli.main(["report", "r"]) == 130
    assert "stopped (Ctrl-C)" in capsys.readouterr().err
