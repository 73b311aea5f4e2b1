"""journald priority prefixes (bridge/daemon/logfmt.py): `<N>` on every line when JOURNAL_STREAM names our
stderr (st_dev:st_ino), as systemd sets it; nothing when it names another file or is unset. Real processes,
real file descriptors, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# a bridge on an interface that does not exist: logs one ERROR line and exits 1 (host: no AF_CAN either)
ARGV = [sys.executable, "-m", "bridge", "nosuchcan0", "tcp-listen://127.0.0.1:0"]


def _run(tmp_path, journal: str | None, *extra: str) -> str:
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(err, "wb") as f:
        if journal == "ours":
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal is not None:
            env["JOURNAL_STREAM"] = journal
        proc = subprocess.run([*ARGV, *extra], stderr=f, env=env, timeout=60)
    assert proc.returncode == 1
    return err.read_text()


def test_prefix_when_journal_stream_is_our_stderr(tmp_path):
    text = _run(tmp_path, "ours")
    lines = text.splitlines()
    assert lines and all(line.startswith("<") for line in lines), text
    assert any(line.startswith("<3>") and "ERROR" in line and "nosuchcan0" in line for line in lines), text


def test_json_lines_get_the_prefix_too(tmp_path):
    text = _run(tmp_path, "ours", "--log-format", "json")
    line = next(line for line in text.splitlines() if "nosuchcan0" in line)
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["level"] == "ERROR"


@pytest.mark.parametrize("journal", [None, "1:2", "garbage", ""])
def test_no_prefix_otherwise(tmp_path, journal):
    """Unset, another file's dev:inode (a child whose stderr was redirected), malformed."""
    text = _run(tmp_path, journal)
    assert "nosuchcan0" in text and not any(line.startswith("<") for line in text.splitlines()), text


def test_priorities_and_multiline():
    import logging

    from bridge.daemon.logfmt import JournalPrefix, priority

    assert [priority(lv) for lv in (50, 40, 30, 20, 10, 5)] == [2, 3, 4, 6, 7, 7]
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "a\nb", (), None)
    assert JournalPrefix(logging.Formatter("%(message)s")).format(record) == "<4>a\n<4>b"
