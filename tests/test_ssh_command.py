"""`vm ssh NAME -- CMD` / `vm run -- CMD`: the command line ssh hands the guest.

ssh itself joins its command arguments with spaces and the guest's login shell runs
the result with `-c`; this replays exactly that (with the host's /bin/sh standing in
for the guest's shell) on what banger builds, so an argv must come out the other end
unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from banger.cli.vm_cmds import _ssh_argv

INFO = {"key": "/nonexistent/key", "known_hosts": "/nonexistent/kh", "ip": "172.30.0.2"}


def _as_guest_shell_runs_it(command: tuple[str, ...]) -> str:
    argv = _ssh_argv(INFO, command, tty=False)
    assert argv[0] == "ssh" and argv[argv.index("root@172.30.0.2") + 1] == "--"
    remote = " ".join(argv[argv.index("--") + 1 :])  # what ssh sends: args joined by spaces
    return subprocess.run(
        ["/bin/sh", "-c", remote], capture_output=True, text=True, check=True, timeout=30
    ).stdout


@pytest.mark.parametrize(
    "args",
    [
        ("a b", "", "it's", '"q"', "$HOME", "x;y", "`id`", "*", "\\n", "tab\there", "-n"),
        ("",),
        ("two  spaces", "new\nline"),
    ],
)
def test_an_argv_reaches_the_guest_program_exactly(args: tuple[str, ...]) -> None:
    out = _as_guest_shell_runs_it(("printf", "[%s]\\n", *args))
    assert out == "".join(f"[{a}]\n" for a in args)


def test_sh_c_keeps_its_script_whole(tmp_path: Path) -> None:
    assert _as_guest_shell_runs_it(("sh", "-c", "echo a; echo b")) == "a\nb\n"
    target = tmp_path / "f"
    assert _as_guest_shell_runs_it(("sh", "-c", f"echo hi > {target}; cat {target}")) == "hi\n"


def test_one_argument_is_a_shell_command_line_as_with_ssh(tmp_path: Path) -> None:
    target = tmp_path / "f"
    assert _as_guest_shell_runs_it((f"echo hi > {target}; echo ok",)) == "ok\n"
    assert target.read_text() == "hi\n"


def test_no_command_is_an_interactive_login() -> None:
    argv = _ssh_argv(INFO, (), tty=True)
    assert "--" not in argv and "-t" in argv and argv[-1] == "root@172.30.0.2"
