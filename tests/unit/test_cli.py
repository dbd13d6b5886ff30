"""The `stt` command's progress display and configuration (its API calls: tests/e2e/test_cli.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from stt_cli.main import main
from stt_cli.progress import Progress, bar, job_line

from tests.helpers import free_port


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _job(status: str, done: int, total: int) -> dict[str, object]:
    return {"status": status, "progress": {"chunks_done": done, "chunks_total": total}}


def test_bar_and_job_line() -> None:
    assert bar(0, 0, width=4) == "[....]"
    assert bar(1, 2, width=4) == "[##..]"
    assert bar(5, 2, width=4) == "[####]", "never wider than its width"
    line = job_line(_job("TRANSCRIBING", 3, 12), 9.0)
    assert line.startswith("TRANSCRIBING [#######")
    assert "3/12 chunks" in line
    assert "chunks not cut yet" in job_line(_job("CHUNKING", 0, 0), 1.0)


def test_off_a_terminal_progress_is_one_line_per_change() -> None:
    out = io.StringIO()
    progress = Progress(out)
    for job in [_job("UPLOADED", 0, 0)] * 3 + [_job("TRANSCRIBING", 0, 4)] + [_job("TRANSCRIBING", 1, 4)] * 5:
        progress.job(job)
    progress.job(_job("COMPLETED", 4, 4))
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["UPLOADED", "TRANSCRIBING", "TRANSCRIBING", "COMPLETED"]
    assert "1/4 chunks" in lines[2]
    assert "\r" not in out.getvalue()


def test_upload_progress_off_a_terminal_is_a_line_per_quarter() -> None:
    out = io.StringIO()
    progress = Progress(out)
    total = 1000
    for sent in range(0, total + 1, 10):
        progress.upload(sent, total)
    lines = out.getvalue().splitlines()
    assert [line.split("]")[1].split("%")[0].strip() for line in lines] == ["0", "25", "50", "75", "100"]


def test_on_a_terminal_the_line_is_redrawn_in_place() -> None:
    out = _Terminal()
    progress = Progress(out)
    progress.job(_job("TRANSCRIBING", 1, 4))
    progress.job(_job("TRANSCRIBING", 1, 4))
    progress.job(_job("COMPLETED", 4, 4))
    progress.end()
    text = out.getvalue()
    assert text.count("\r") == 3
    assert text.endswith("\n")
    assert text.count("\n") == 1


def test_quiet_shows_nothing() -> None:
    out = io.StringIO()
    progress = Progress(out, quiet=True)
    progress.upload(1, 2)
    progress.job(_job("COMPLETED", 1, 1))
    progress.end()
    assert out.getvalue() == ""


def test_the_local_stacks_env_file_is_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STT_API_URL", raising=False)
    monkeypatch.delenv("STT_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 2
    assert "no API key" in capsys.readouterr().err

    port = free_port()  # nothing listens there: the message names the URL the env file gave
    (tmp_path / ".stack").mkdir()
    (tmp_path / ".stack" / "env").write_text(f"STT_API_URL=http://127.0.0.1:{port}\nSTT_API_KEY=stt_dev\n")
    assert main(["list"]) == 3
    err = capsys.readouterr().err
    assert f"cannot reach the API at http://127.0.0.1:{port}" in err
    assert "make up" in err

    other = free_port()
    monkeypatch.setenv("STT_API_URL", f"http://127.0.0.1:{other}")  # the environment wins over the file
    assert main(["list"]) == 3
    assert f"127.0.0.1:{other}" in capsys.readouterr().err
