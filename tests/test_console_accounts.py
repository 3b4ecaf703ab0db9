"""``cbx console user``: accounts with argon2 hashes, in a file only its owner can read."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker.console.auth import Accounts, Role, Sessions
from broker.errors import CbxError


def cbx(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cbx.cli", "console", "user", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"CBX_HOME": str(home), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_add_list_remove(tmp_path: Path) -> None:
    added = cbx(
        tmp_path,
        "add",
        "olive",
        "--role",
        "operator",
        "--password-stdin",
        stdin="a long enough password\n",
    )
    assert added.returncode == 0, added.stderr
    path = tmp_path / "console" / "accounts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored["olive"]["role"] == "operator"
    assert stored["olive"]["hash"].startswith("$argon2id$")
    assert "a long enough password" not in path.read_text()
    listed = json.loads(cbx(tmp_path, "list", "--json").stdout)
    assert [(a["name"], a["role"]) for a in listed] == [("olive", "operator")]
    short = cbx(tmp_path, "add", "victor", "--password-stdin", stdin="short\n")
    assert short.returncode == 1
    assert "password: at least 12 characters" in short.stderr
    bad = cbx(tmp_path, "add", "Robert'); DROP", "--password-stdin", stdin="x" * 20 + "\n")
    assert bad.returncode == 1
    assert "account name" in bad.stderr
    assert cbx(tmp_path, "remove", "olive").returncode == 0
    gone = cbx(tmp_path, "remove", "olive")
    assert gone.returncode == 1
    assert "no console account 'olive'" in gone.stderr
    assert json.loads(cbx(tmp_path, "list", "--json").stdout) == []


def test_verify_and_sessions(tmp_path: Path) -> None:
    import datetime as dt

    accounts = Accounts(tmp_path / "a.json")
    accounts.add("olive", "correct horse battery", Role.OPERATOR)
    assert accounts.verify("olive", "correct horse battery") == Role.OPERATOR
    assert accounts.verify("olive", "wrong horse battery") is None
    assert accounts.verify("nobody", "correct horse battery") is None
    with pytest.raises(CbxError, match="account name"):
        accounts.add("", "correct horse battery", Role.VIEWER)
    now = [dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)]  # across the clocks going forward
    sessions = Sessions(idle=dt.timedelta(minutes=30), clock=lambda: now[0])
    s = sessions.start("olive", Role.OPERATOR)
    now[0] += dt.timedelta(minutes=29)
    assert sessions.get(s.token) is s
    now[0] += dt.timedelta(minutes=29)  # 29 minutes idle again: still fine
    assert sessions.get(s.token) is s
    now[0] += dt.timedelta(minutes=31)
    from broker.console.auth import Expired

    with pytest.raises(Expired):
        sessions.get(s.token)
    assert sessions.get(s.token) is None  # ended for good
    assert sessions.get("forged-token") is None
