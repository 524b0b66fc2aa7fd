"""A real OCI registry on 127.0.0.1 and a test image built from a tiny root tree.

The registry is Debian's `docker-registry` (the CNCF distribution registry) with a
config file the fixture writes: a free port, storage in a temp dir, no auth, plain
HTTP. `ns` runs it inside a network namespace (where the test's daemon lives).

The image is made with umoci, layer by layer, from trees this module writes:

  layer 1  /bin/busybox (the host's static busybox) and its applet links, /etc/passwd,
           /etc/group, /etc/marker, /etc/doomed, a setuid file, /home/app (uid 1000)
  layer 2  /etc/doomed deleted (a whiteout), /srv/owned owned by 1234:2345 mode 0640

and a config with Env, WorkingDir, User and an Entrypoint that records them.
Nothing here reaches outside this machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from banger.system.run import die_with_parent

MARKER = "banger-oci-marker-4711"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "id", "ls", "stat", "sleep", "echo", "pwd", "test", "mkdir", "rm")
IMAGE_PATH = "/opt/app/bin:/usr/bin:/bin"  # the image's Env PATH
ENTRYPOINT = (
    "/bin/sh",
    "-c",
    'echo "$GREETING $(pwd) $(id -u)" > /tmp/entrypoint.out; exec sleep 1000000',
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ns_argv(ns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


@contextmanager
def registry(tmp: Path, ns: str | None = None, port: int | None = None) -> Iterator[str]:
    """A running registry; yields its host:port. Stopped (by PID) and removed after."""
    port = port or free_port()
    storage = tmp / "registry-storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = tmp / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (tmp / "registry.log").open("wb")
    proc = subprocess.Popen(
        _ns_argv(ns, ["docker-registry", "serve", str(config)]),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # a killed test run does not leave it serving
    )
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(
                _ns_argv(ns, ["python3", "-c", _PROBE, f"http://{addr}/v2/"]),
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"docker-registry did not start: {(tmp / 'registry.log').read_text()}"
                )
            time.sleep(0.1)
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


_PROBE = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)"


def _probe_host(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)
    except OSError:
        return False
    return True


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def _base_tree(root: Path) -> None:
    for d in ("bin", "etc", "root", "tmp", "srv", "home/app", "usr/bin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "etc" / "marker").write_text(MARKER + "\n")
    (root / "etc" / "doomed").write_text("deleted by the upper layer\n")
    app_bin = root / "opt" / "app" / "bin"  # on the image's PATH only (its Env)
    app_bin.mkdir(parents=True)
    (app_bin / "app-hello").write_text('#!/bin/sh\necho "app says $GREETING"\n')
    os.chmod(app_bin / "app-hello", 0o755)
    setuid = root / "usr" / "bin" / "setuid-tool"
    setuid.write_text("#!/bin/sh\necho setuid\n")
    os.chmod(setuid, 0o4755)
    os.chown(root / "home" / "app", 1000, 1000)
    (root / "home" / "app" / "notes").write_text("app's file\n")
    os.chown(root / "home" / "app" / "notes", 1000, 1000)


def build_image(
    work: Path, *, arch: str = "amd64", tag: str = "1", entrypoint: bool = True
) -> Path:
    """The two-layer test image as an OCI layout at work/layout (tag `tag`); needs root."""
    layout = work / "layout"
    image = f"{layout}:{tag}"
    if not layout.exists():
        _run("umoci", "init", "--layout", str(layout))
    _run("umoci", "new", "--image", image)
    bundle = work / f"bundle-{tag}"
    _run("umoci", "unpack", "--image", image, str(bundle))
    _base_tree(bundle / "rootfs")
    _run("umoci", "repack", "--image", image, str(bundle))
    shutil.rmtree(bundle)
    _run("umoci", "unpack", "--image", image, str(bundle))
    (bundle / "rootfs" / "etc" / "doomed").unlink()
    owned = bundle / "rootfs" / "srv" / "owned"
    owned.write_text("owned by 1234\n")
    os.chown(owned, 1234, 2345)
    os.chmod(owned, 0o640)
    _run("umoci", "repack", "--image", image, str(bundle))
    shutil.rmtree(bundle)
    config = [
        "umoci", "config", "--image", image, "--architecture", arch, "--os", "linux",
        "--config.env", "GREETING=hello", "--config.env", f"PATH={IMAGE_PATH}",
        "--config.workingdir", "/srv",
        "--config.user", "1000",
    ]  # fmt: skip
    if entrypoint:
        config += [arg for part in ENTRYPOINT for arg in ("--config.entrypoint", part)]
    _run(*config)
    _run("umoci", "gc", "--layout", str(layout))
    return layout


def push(layout: Path, tag: str, dest: str, ns: str | None = None) -> None:
    """skopeo copy the layout's `tag` to docker://dest over plain HTTP."""
    argv = ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false"]
    argv += [f"oci:{layout}:{tag}", f"docker://{dest}"]
    subprocess.run(_ns_argv(ns, argv), check=True, capture_output=True)
