"""`image pull` of an OCI image from a real registry, then one boot of it: the real
daemon and CLI inside a test-made network namespace, Debian's docker-registry on
127.0.0.1 in that namespace, an image built here with umoci (a whiteout in the upper
layer, files owned by non-root users, a setuid file, Env/WorkingDir/User/Entrypoint).

The image has no init system and no SSH server: banger-init is PID 1, starts the agent
and the entrypoint, and `vm run`/`vm exec` go through the agent. One VM for the module.
The kernel comes from the shared test cache; the pulled image lives in this test's own
data directory, so concurrent runs never share it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns, oci_kit
from tests.sandbox import Sandbox
from tests.vmkit import DATA, ensure_artifacts, private_home

pytestmark = [
    pytest.mark.boot,
    netns.skip_unless_netns(),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("skopeo", "umoci", "docker-registry", "patchelf")),
        reason="needs skopeo, umoci, patchelf and docker-registry (scripts/setup.sh)",
    ),
]


class Oci:
    def __init__(self, b: Sandbox, addr: str) -> None:
        self.b, self.addr = b, addr


def _kernels_only(home: Path) -> Path:
    """A data dir of the home's own (its images are the test's) sharing the cached kernels."""
    data = home / "data"
    data.mkdir()
    (data / "kernels").symlink_to(DATA / "kernels")
    return data


@pytest.fixture(scope="module")
def oci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oci]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))  # the kernel, from the shared cache
    tmp = tmp_path_factory.mktemp("oci")
    layout = oci_kit.build_image(tmp / "src")
    with private_home(data=_kernels_only) as b:
        assert b.ns is not None
        with oci_kit.registry(tmp, ns=b.ns, port=5000) as addr:
            oci_kit.push(layout, "1", f"{addr}/test/app:1", ns=b.ns)
            yield Oci(b, addr)


def test_pull_then_run_prints_the_marker_with_layers_owners_and_setuid_kept(oci: Oci) -> None:
    b = oci.b
    r = b.run("image", "pull", f"{oci.addr}/test/app:1", timeout=900)
    assert "image test-app ready" in r.stdout
    show = b.run("image", "show", "test-app").stdout
    for expected in ("workdir    /srv", "user       1000", "env        GREETING=hello",
                     "init=/sbin/banger-init", f"reference  {oci.addr}/test/app:1"):  # fmt: skip
        assert expected in show, show
    r = b.run("vm", "run", "--name", "t", "test-app", "--", "cat", "/etc/marker", timeout=900)
    assert r.stdout.strip().splitlines()[-1] == oci_kit.MARKER
    # the whiteout of the upper layer
    r = b.run("vm", "exec", "t", "--", "ls", "/etc/doomed", check=False)
    assert r.returncode != 0 and "No such file" in r.stderr
    r = b.run("vm", "exec", "t", "--", "stat", "-c", "%u:%g %a", "/srv/owned", "/home/app/notes")
    assert r.stdout.split("\n")[:2] == ["1234:2345 640", "1000:1000 644"]
    r = b.run("vm", "exec", "t", "--", "stat", "-c", "%A", "/usr/bin/setuid-tool")
    assert r.stdout.strip() == "-rwsr-xr-x"
    # the entrypoint ran with the image's Env, WorkingDir and User
    deadline = time.monotonic() + 60
    while True:
        r = b.run("vm", "exec", "t", "--", "cat", "/tmp/entrypoint.out", check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.stdout == "hello /srv 1000\n"
    # commands through the agent get the image's Env too (its PATH finds app-hello);
    # --env overrides it, as with docker exec
    r = b.run("vm", "exec", "t", "--", "app-hello")
    assert r.stdout == "app says hello\n"
    r = b.run("vm", "exec", "-e", "GREETING=bye", "t", "--", "sh", "-c", "app-hello; echo $PATH")
    assert r.stdout == f"app says bye\n{oci_kit.IMAGE_PATH}\n"
    # ... and its WorkingDir and User (as with docker exec); -w and -u override each
    whoami = ("sh", "-c", 'echo "$(pwd) $(id -un) $HOME"')
    assert b.run("vm", "exec", "t", "--", *whoami).stdout == "/srv app /home/app\n"
    r = b.run("vm", "exec", "-u", "root", "t", "--", *whoami)
    assert r.stdout == "/srv root /root\n"
    r = b.run("vm", "exec", "-w", "/tmp", "t", "--", *whoami)
    assert r.stdout == "/tmp app /home/app\n"
    r = b.run("vm", "exec", "-u", "0", "-w", "/", "t", "--", "sh", "-c", "pwd; id -u")
    assert r.stdout == "/\n0\n"
    # the network came up from ip= and /root is the work disk
    r = b.run("vm", "exec", "t", "--", "cat", "/proc/mounts")
    assert " /root ext4 " in r.stdout
    r = b.run("vm", "exec", "t", "--", "cat", "/proc/net/route")
    assert "eth0\t00000000" in r.stdout  # a default route on eth0
    # no SSH server: vm ssh says so in one line, and what to use instead
    r = b.run("vm", "ssh", "t", "--", "true", check=False)
    assert r.returncode != 0
    assert "has no SSH server" in r.stderr and "banger vm exec t" in r.stderr
    # a clean stop through the power button, then delete
    b.run("vm", "stop", "t", timeout=120)
    assert b.json("vm", "show", "t")["state"] == "stopped"
    b.run("vm", "delete", "t", timeout=120)
    b.run("image", "rm", "test-app")


def test_pull_errors_from_the_cli_are_one_line_with_a_fix(oci: Oci) -> None:
    b = oci.b
    for args, problem, fix in (
        (["Bad:Ref:1"], "is malformed", "write it as"),
        ([f"{oci.addr}/test/app:9"], "test/app:9 does not exist", "list-tags"),
        (["127.0.0.1:1/test/app:1"], "unreachable", "running"),
    ):
        r = b.run("image", "pull", *args, check=False, timeout=300)
        assert r.returncode != 0
        lines = [line for line in r.stderr.splitlines() if line.startswith(("error:", "hint:"))]
        assert len(lines) == 2, r.stderr
        assert problem in lines[0] and fix in lines[1], r.stderr
    assert b.json("image", "list") == [] or all(
        i["name"] != "test-app" for i in b.json("image", "list")
    )
