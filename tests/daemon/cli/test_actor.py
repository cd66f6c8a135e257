"""The actor of a CLI command comes from credentials the caller cannot choose.

Audit rows name who did what; a compliance officer searches them with `--actor 'os:alice*'`. An
environment variable (SUDO_USER, USER, LOGNAME) can be set by anyone to anything, so it must never
change the actor: the effective uid and the kernel's login uid (/proc/self/loginuid, set at login by
pam_loginuid, kept across sudo, not writable by an unprivileged process) do.
"""
from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from daemon import runtime
from daemon.runtime import os_actor

ME = os.geteuid()


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def _other_uid() -> int:
    """A uid with a passwd entry other than ours (a real login name), else one without."""
    for entry in pwd.getpwall():
        if entry.pw_uid != ME and entry.pw_uid < 65534:
            return entry.pw_uid
    return ME + 4242


@pytest.fixture
def loginuid(tmp_path, monkeypatch):
    path = tmp_path / "loginuid"
    monkeypatch.setattr(runtime, "LOGINUID_FILE", path)
    return path


@pytest.mark.parametrize("variable", ["SUDO_USER", "USER", "LOGNAME", "SUDO_UID"])
def test_environment_variables_never_change_the_actor(loginuid, monkeypatch, variable):
    loginuid.write_text("4294967295")  # no login session (a service, a container)
    before = os_actor()
    monkeypatch.setenv(variable, "alice" if variable != "SUDO_UID" else "1000")
    assert os_actor() == before == f"os:{_name(ME)}"


def test_a_person_running_a_command_as_the_service_user_is_named_first(loginuid, monkeypatch):
    """`sudo -u cxrd cxrd audit query` by alice: os:alice(as:cxrd)."""
    other = _other_uid()
    loginuid.write_text(f"{other}\n")
    monkeypatch.setenv("SUDO_USER", "mallory")
    assert os_actor() == f"os:{_name(other)}(as:{_name(ME)})"


def test_the_same_user_or_no_login_uid_is_named_once(loginuid):
    loginuid.write_text(str(ME))
    assert os_actor() == f"os:{_name(ME)}"
    loginuid.write_text("4294967295")
    assert os_actor() == f"os:{_name(ME)}"
    loginuid.unlink()  # a kernel without audit support has no such file
    assert os_actor() == f"os:{_name(ME)}"
    loginuid.write_text("not a number")
    assert os_actor() == f"os:{_name(ME)}"


def test_a_uid_without_passwd_entry_is_named_by_number(loginuid):
    unknown = next(u for u in range(60000, 65000) if _name(u).startswith("uid"))
    loginuid.write_text(str(unknown))
    assert os_actor() == f"os:uid{unknown}(as:{_name(ME)})"


def test_this_process_reads_the_real_kernel_file():
    assert runtime.LOGINUID_FILE == Path("/proc/self/loginuid")
