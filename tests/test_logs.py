"""Logging: journald's format when stderr is the journal, readable lines otherwise, live levels."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from sorcha_peerd.logs import (
    HUB_ID,
    PEER_ID,
    LogControl,
    configure_logging,
    is_journal_stream,
    syslog_priority,
)

TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
log = logging.getLogger("sorcha_peerd.peer.session")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """Leave the root logger as the test found it (handlers and level)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "stderr").open("w+", encoding="utf-8") as f:
        yield f


def _journal_env(stream: TextIO) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def _raise(exc: Exception) -> None:
    raise exc


def _lines(stream: TextIO) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


# --- journal detection -------------------------------------------------------------------------


def test_journal_stream_is_matched_by_device_and_inode(stream: TextIO, tmp_path: Path) -> None:
    assert is_journal_stream(_journal_env(stream), stream)
    st = os.fstat(stream.fileno())
    with (tmp_path / "other").open("w") as other:
        assert not is_journal_stream(_journal_env(other), stream)
    for value in ("", "garbage", f"{st.st_dev}", f"{st.st_dev}:x", f"x:{st.st_ino}"):
        assert not is_journal_stream({"JOURNAL_STREAM": value}, stream)
    assert not is_journal_stream({}, stream)
    # no file descriptor at all
    assert not is_journal_stream(_journal_env(stream), io.StringIO())


def test_syslog_priorities() -> None:
    assert [
        syslog_priority(level)
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    ] == [7, 6, 4, 3, 2]
    assert syslog_priority(5) == 7
    assert syslog_priority(25) == 6
    assert syslog_priority(60) == 2


# --- journal format ----------------------------------------------------------------------------


def test_journal_lines_have_a_priority_and_no_timestamp(stream: TextIO) -> None:
    control = configure_logging("debug", env=_journal_env(stream), stream=stream)
    assert control.journal
    log.debug("d %s", 1)
    log.info("connected to %s", "n0")
    log.warning("w")
    log.error("e")
    log.critical("c")
    logging.getLogger("purerpc_like.thing").info("third party")
    assert _lines(stream) == [
        "<7>peer.session: d 1",
        "<6>peer.session: connected to n0",
        "<4>peer.session: w",
        "<3>peer.session: e",
        "<2>peer.session: c",
        "<6>purerpc_like.thing: third party",
    ]


def test_journal_tracebacks_keep_the_prefix_on_every_line(stream: TextIO) -> None:
    configure_logging("info", env=_journal_env(stream), stream=stream)
    try:
        _raise(RuntimeError("boom"))
    except RuntimeError:
        log.exception("sync failed\nsecond line")
    lines = _lines(stream)
    assert lines[0] == "<3>peer.session: sync failed"
    assert lines[1] == "<3>second line"
    assert lines[2] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>RuntimeError: boom"
    assert len(lines) > 4
    assert all(line.startswith("<3>") for line in lines)


def test_journal_stack_info_keeps_the_prefix(stream: TextIO) -> None:
    configure_logging("info", env=_journal_env(stream), stream=stream)
    log.warning("where am I", stack_info=True)
    lines = _lines(stream)
    assert lines[0] == "<4>peer.session: where am I"
    assert lines[1] == "<4>Stack (most recent call last):"
    assert all(line.startswith("<4>") for line in lines)


# --- plain format ------------------------------------------------------------------------------


def test_plain_lines_have_a_timestamp_and_level(stream: TextIO) -> None:
    control = configure_logging("info", env={}, stream=stream)
    assert not control.journal
    log.info("connected to %s", "n0")
    logging.getLogger("sorcha_peerd").warning("top")
    lines = _lines(stream)
    assert re.fullmatch(TIMESTAMP + r" INFO peer\.session: connected to n0", lines[0]), lines
    assert re.fullmatch(TIMESTAMP + r" WARNING sorcha_peerd: top", lines[1]), lines
    assert len(lines) == 2


def test_plain_tracebacks_are_kept_whole(stream: TextIO) -> None:
    configure_logging("info", env={}, stream=stream)
    try:
        _raise(ValueError("bad"))
    except ValueError:
        log.exception("oops")
    lines = _lines(stream)
    assert re.fullmatch(TIMESTAMP + r" ERROR peer\.session: oops", lines[0])
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad"


def test_a_journal_stream_of_another_file_means_plain(stream: TextIO, tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w") as journal:
        control = configure_logging("info", env=_journal_env(journal), stream=stream)
    assert not control.journal
    log.info("hello")
    [line] = _lines(stream)
    assert re.fullmatch(TIMESTAMP + r" INFO peer\.session: hello", line)


def test_a_stream_without_a_file_descriptor_means_plain() -> None:
    out = io.StringIO()
    control = configure_logging("info", env={"JOURNAL_STREAM": "1:2"}, stream=out)
    assert not control.journal
    log.info("hello")
    assert re.fullmatch(TIMESTAMP + r" INFO peer\.session: hello\n", out.getvalue())


def test_the_default_stream_is_stderr_at_call_time(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", env={})
    log.info("to stderr")
    captured = capsys.readouterr()
    assert "INFO peer.session: to stderr" in captured.err
    assert captured.out == ""


# --- structured fields -------------------------------------------------------------------------


def test_peer_and_hub_ids_show_in_both_formats(stream: TextIO, tmp_path: Path) -> None:
    configure_logging("info", env=_journal_env(stream), stream=stream)
    log.info("connected", extra={PEER_ID: "p1", HUB_ID: "n0"})
    log.info("hub only", extra={HUB_ID: "n1"})
    assert _lines(stream) == [
        "<6>peer.session: connected peer=p1 hub=n0",
        "<6>peer.session: hub only hub=n1",
    ]

    with (tmp_path / "plain").open("w+") as plain:
        configure_logging("info", env={}, stream=plain)
        log.info("connected", extra={PEER_ID: "p1", HUB_ID: "n0"})
        [line] = _lines(plain)
    assert line.endswith(" INFO peer.session: connected peer=p1 hub=n0")


# --- levels ------------------------------------------------------------------------------------


def test_set_level_changes_it_live(stream: TextIO) -> None:
    control = configure_logging("info", env=_journal_env(stream), stream=stream)
    assert control.level == "info"
    log.debug("hidden 1")
    log.info("shown 1")
    control.set_level("debug")
    assert control.level == "debug"
    log.debug("shown 2")
    control.set_level("ERROR")
    assert control.level == "error"
    log.warning("hidden 2")
    log.error("shown 3")
    control.set_level("warning")
    log.info("hidden 3")
    log.warning("shown 4")
    assert _lines(stream) == [
        "<6>peer.session: shown 1",
        "<7>peer.session: shown 2",
        "<3>peer.session: shown 3",
        "<4>peer.session: shown 4",
    ]


def test_unknown_levels_are_refused_changing_nothing(stream: TextIO) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(ValueError, match="verbose"):
        configure_logging("verbose", env={}, stream=stream)
    assert root.handlers == before
    control = configure_logging("info", env={}, stream=stream)
    with pytest.raises(ValueError, match="trace"):
        control.set_level("trace")
    assert control.level == "info"
    assert root.level == logging.INFO


def test_noisy_third_party_loggers_are_quiet_unless_debug(stream: TextIO) -> None:
    control = configure_logging("info", env=_journal_env(stream), stream=stream)
    for name in ("pymongo.topology", "h2.connection", "hpack.hpack", "pymongo"):
        logging.getLogger(name).info("chatter")
    logging.getLogger("pymongo.topology").warning("matters")
    logging.getLogger("pymongoose").info("not pymongo")
    control.set_level("debug")
    logging.getLogger("pymongo.command").debug("now visible")
    logging.getLogger("h2.connection").info("also visible")
    assert _lines(stream) == [
        "<4>pymongo.topology: matters",
        "<6>pymongoose: not pymongo",
        "<7>pymongo.command: now visible",
        "<6>h2.connection: also visible",
    ]
    # their own logger levels are left alone
    assert logging.getLogger("pymongo").level == logging.NOTSET


# --- idempotence -------------------------------------------------------------------------------


def test_configuring_twice_does_not_duplicate_output(stream: TextIO, tmp_path: Path) -> None:
    configure_logging("info", env={}, stream=stream)
    configure_logging("info", env={}, stream=stream)
    log.info("once")
    assert len(_lines(stream)) == 1

    with (tmp_path / "second").open("w+") as second:
        configure_logging("info", env=_journal_env(second), stream=second)
        log.info("moved")
        assert _lines(second) == ["<6>peer.session: moved"]
    assert len(_lines(stream)) == 1  # the first handler is gone


def test_other_root_handlers_are_left_alone(stream: TextIO) -> None:
    root = logging.getLogger()
    other = logging.StreamHandler(io.StringIO())
    root.addHandler(other)
    configure_logging("info", env={}, stream=stream)
    configure_logging("info", env={}, stream=stream)
    assert other in root.handlers


def test_close_removes_the_handler(stream: TextIO) -> None:
    control: LogControl = configure_logging("info", env={}, stream=stream)
    control.close()
    assert control.handler not in logging.getLogger().handlers
    log.warning("nowhere")
    assert _lines(stream) == []
