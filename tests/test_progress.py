"""Progress: bars only on a terminal or with --progress; otherwise periodic log lines; --no-progress: nothing."""

from __future__ import annotations

import logging

import pytest

from boltzdiff import progress as prog


@pytest.fixture(autouse=True)
def _auto_mode():
    yield
    prog.set_mode("auto")


def test_without_a_terminal_progress_is_logged_every_tenth(caplog, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="boltzdiff.progress"):
        assert list(prog.progress(range(100), desc="work")) == list(range(100))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 9 and lines[0].startswith("work: 10/100 (10 %)")


def test_no_progress_reports_nothing_and_progress_forces_a_bar(caplog):
    prog.set_mode(prog.mode_from_flags(True, True))
    with caplog.at_level(logging.INFO, logger="boltzdiff.progress"):
        bar = prog.progress(total=10, desc="x")
        bar.update(10)
        bar.close()
    assert not caplog.records
    prog.set_mode(prog.mode_from_flags(True, False))
    bar = prog.progress(total=2, desc="y")
    assert type(bar).__module__.startswith("tqdm")
    bar.close()
    with pytest.raises(ValueError):
        prog.set_mode("loud")
