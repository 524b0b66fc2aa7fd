"""`banger kernel build` without compiling a kernel: the config check, and the build's
bookkeeping (publish, no-op, rebuild, failure, cancel) against a stand-in source tree.

The stand-in is a directory in the build cache that looks unpacked, whose Makefile
answers the targets the build runs: `tinyconfig`, `olddefconfig` (last assignment
wins, like Kconfig; options nobody set stay off) and `vmlinux` (prints kbuild-style
`CC` lines and links /bin/true as the "kernel"). Everything around it is real:
the repository fragment, the required-option check, run_lines, publishing.
The real compile and boot are in test_kernel_build_boot.py.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from banger.artifacts.kernels import apt, build, kconfig
from banger.artifacts.kernels.info import INITRD
from banger.artifacts.kernels.pull import list_kernels, load_kernel
from banger.errors import BangerError, Cancelled, Conflict, InvalidInput
from tests.conftest import RunningDaemon, cli

PKG = apt.DebPackage("linux-source-6.1", "6.1.999-1", "all", 1, "")

OLDDEFCONFIG = """\
import re, sys
vals = {}
for line in open(sys.argv[1]):
    line = line.strip()
    m = re.match(r"^(CONFIG_\\w+)=(.*)$", line) or re.match(r"^# (CONFIG_\\w+) is not set$", line)
    if m:
        vals[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
with open(sys.argv[1], "w") as f:
    for k, v in vals.items():
        f.write(f"{k}={v}\\n" if v != "n" else f"# {k} is not set\\n")
"""

MAKEFILE = """\
O ?= .
tinyconfig:
\t@mkdir -p $(O) && echo '# CONFIG_VIRTIO_BLK is not set' > $(O)/.config
\t@echo '# CONFIG_PVH is not set' >> $(O)/.config
olddefconfig:
\t@python3 $(CURDIR)/olddefconfig.py $(O)/.config
vmlinux:
\t@echo run >> $(CURDIR)/../vmlinux-runs
\t@for i in 1 2 3 4 5; do echo "  CC      kernel/f$$i.o"; done
\t@if [ -e $(CURDIR)/../slow ]; then sleep 60; fi
\t@if [ -e $(CURDIR)/../fail ]; then echo "fs/x.c:1:1: error: boom"; exit 2; fi
\t@mkdir -p $(O)/include/config && echo 6.1.999-banger > $(O)/include/config/kernel.release
\t@cp /bin/true $(O)/vmlinux
"""


class Tree:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.kernels = base / "kernels"
        self.tmp = base / "tmp"
        self.cache = base / "cache"
        self.root = self.cache / f"{PKG.name}_{PKG.version}"
        src = self.root / "src"
        src.mkdir(parents=True)
        (src / "Makefile").write_text(MAKEFILE)
        (src / "olddefconfig.py").write_text(OLDDEFCONFIG)
        (src / ".banger-unpacked").write_text("stand-in\n")

    def runs(self) -> int:
        f = self.root / "vmlinux-runs"
        return len(f.read_text().splitlines()) if f.exists() else 0

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.tmp.iterdir()) if self.tmp.exists() else []

    def build(self, req: build.BuildRequest, progress: object = None) -> object:
        prog = progress or (lambda *a, **k: None)
        return build.build_kernel(req, self.kernels, self.tmp, self.cache, prog)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tree:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    monkeypatch.setattr(apt, "candidate", lambda name, opts=(): PKG)
    return Tree(tmp_path)


def fragment(tmp_path: Path, text: str) -> kconfig.Fragment:
    path = tmp_path / "my.config"
    path.write_text(text)
    return kconfig.Fragment(str(path), text)


def test_the_repository_fragment_builds_in_every_required_option() -> None:
    ours = kconfig.repository_fragment().values()
    missing = [opt for opt, _ in kconfig.REQUIRED if ours.get(opt) != "y"]
    assert missing == []
    assert ours.get("MODULES") == "n" and ours.get("BLK_DEV_INITRD") == "n"


def test_a_fragment_disabling_virtio_blk_fails_before_compiling(tree: Tree, tmp_path: Path) -> None:
    bad = fragment(tmp_path, "CONFIG_EXT4_FS=y\n# CONFIG_VIRTIO_BLK is not set\n")
    with pytest.raises(kconfig.KernelConfigError) as exc:
        tree.build(build.BuildRequest("micro", fragment=bad))
    assert exc.value.message.startswith(
        "CONFIG_VIRTIO_BLK is required by banger (the root disk /dev/vda and the work disk) "
        "but is 'n' in the final config"
    )
    assert exc.value.message.endswith(f"remove it from {tmp_path / 'my.config'}")
    assert tree.runs() == 0  # nothing was compiled
    assert list_kernels(tree.kernels) == [] and tree.leftovers() == []


def test_an_option_lost_to_a_missing_dependency_is_named() -> None:
    final = "\n".join(f"CONFIG_{opt}=y" for opt, _ in kconfig.REQUIRED if opt != "OVERLAY_FS")
    with pytest.raises(kconfig.KernelConfigError) as exc:
        kconfig.check_required(final + "\n", [kconfig.repository_fragment()])
    assert "CONFIG_OVERLAY_FS is required by banger" in exc.value.message
    assert "an option it depends on is off" in exc.value.message
    assert "OVERLAY_FS" in (exc.value.hint or "")


def test_a_build_publishes_a_kernel_without_initramfs_and_reports_compiles(tree: Tree) -> None:
    seen: list[tuple[str, str]] = []
    info = tree.build(build.BuildRequest("micro"), lambda s, d="", f=None: seen.append((s, d)))
    k = load_kernel(tree.kernels, "micro")
    assert k is not None and k == info
    assert k.kind == "built" and not k.has_initrd and INITRD not in k.files
    assert (k.package, k.version, k.kernel_release) == (PKG.name, PKG.version, "6.1.999-banger")
    assert k.vmlinux.read_bytes() == Path("/bin/true").read_bytes()
    final = kconfig.parse(k.config.read_text())
    assert final["VIRTIO_BLK"] == "y" and final["PVH"] == "y"
    assert "microvm.config" in (k.path / "fragment.config").read_text()
    assert any(s == "configure" for s, _ in seen)
    assert any(s == "compile" and d.startswith("CC ") for s, d in seen)
    assert (tree.root / "cc-count").read_text().strip() == "5"  # the next build's estimate
    assert tree.leftovers() == []


def test_an_unchanged_build_is_a_no_op_and_a_changed_fragment_rebuilds(
    tree: Tree, tmp_path: Path
) -> None:
    first = tree.build(build.BuildRequest("micro"))
    again = tree.build(build.BuildRequest("micro"))
    assert tree.runs() == 1 and again == first

    extra = fragment(tmp_path, "CONFIG_NFT_FIB=y\n")
    rebuilt = tree.build(build.BuildRequest("micro", fragment=extra))
    assert tree.runs() == 2
    k = load_kernel(tree.kernels, "micro")
    assert k is not None and k == rebuilt
    assert k.fragment_sha256 != first.fragment_sha256  # type: ignore[attr-defined]
    assert kconfig.parse(k.config.read_text())["NFT_FIB"] == "y"
    assert str(tmp_path / "my.config") in (k.path / "fragment.config").read_text()
    assert tree.leftovers() == []


def test_a_failed_compile_leaves_no_kernel_and_no_temp_files(tree: Tree) -> None:
    (tree.root / "fail").touch()
    with pytest.raises(build.KernelBuildError) as exc:
        tree.build(build.BuildRequest("micro"))
    assert "fs/x.c:1:1: error: boom" in exc.value.message
    assert list_kernels(tree.kernels) == [] and tree.leftovers() == []


def test_a_failed_rebuild_keeps_the_previous_kernel(tree: Tree, tmp_path: Path) -> None:
    first = tree.build(build.BuildRequest("micro"))
    (tree.root / "fail").touch()
    with pytest.raises(build.KernelBuildError):
        tree.build(build.BuildRequest("micro", fragment=fragment(tmp_path, "CONFIG_TUN=y\n")))
    assert load_kernel(tree.kernels, "micro") == first


def test_cancel_stops_make_at_once_and_leaves_nothing(tree: Tree) -> None:
    (tree.root / "slow").touch()
    cancel = threading.Event()

    def progress(stage: str, detail: str = "", fraction: float | None = None) -> None:
        if cancel.is_set():
            raise Cancelled("kernel.build micro was cancelled")
        if stage == "compile" and detail.startswith("CC 5/"):
            cancel.set()  # the user cancels after the last CC line

    started = time.monotonic()
    with pytest.raises(Cancelled):
        tree.build(build.BuildRequest("micro"), progress)
    assert time.monotonic() - started < 30  # make's `sleep 60` was killed
    assert list_kernels(tree.kernels) == [] and tree.leftovers() == []
    sleepers = [
        p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmd(p) == "sleep\x0060\x00"
    ]
    assert not [p for p in sleepers if str(tree.root) in _environ_cwd(p)]


def _cmd(p: Path) -> str:
    try:
        return (p / "cmdline").read_text()
    except OSError:
        return ""


def _environ_cwd(p: Path) -> str:
    try:
        return os.readlink(p / "cwd")
    except OSError:
        return ""


def test_bad_requests_are_refused_before_any_work(tree: Tree, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="catalog kernel's name"):
        tree.build(build.BuildRequest("debian-6.1"))
    with pytest.raises(InvalidInput, match="not a Debian kernel source package"):
        tree.build(build.BuildRequest("micro", source="linux-image-cloud-amd64"))
    with pytest.raises(InvalidInput, match="is not valid"):
        tree.build(build.BuildRequest("../x"))
    typo = fragment(tmp_path, "CONFIG_TUN=y\nCONFIG_VETH y\n")
    with pytest.raises(kconfig.KernelConfigError, match=r"my.config:2: 'CONFIG_VETH y'"):
        tree.build(build.BuildRequest("micro", fragment=typo))
    assert tree.runs() == 0 and tree.leftovers() == []


def test_a_pulled_kernel_is_never_overwritten_by_a_build(tree: Tree) -> None:
    first = tree.build(build.BuildRequest("micro"))
    manifest = first.path / "manifest.json"  # type: ignore[attr-defined]
    manifest.write_text(manifest.read_text().replace('"kind": "built"', '"kind": "pulled"'))
    with pytest.raises(Conflict, match="was pulled from Debian"):
        tree.build(build.BuildRequest("micro", fragment=None, jobs=1, source=PKG.name))


def test_build_show_and_remove_through_the_cli(daemon: RunningDaemon, tmp_path: Path) -> None:
    try:
        pkg = apt.candidate("linux-source-6.1")
    except BangerError as exc:
        pytest.skip(f"apt does not know linux-source-6.1: {exc.message}")
    stand_in = Tree(tmp_path / "t")
    shutil.move(stand_in.root, daemon.paths.kernel_build_cache / f"{pkg.name}_{pkg.version}")

    bad = tmp_path / "no-blk.config"
    bad.write_text("# CONFIG_VIRTIO_BLK is not set\n")
    res = cli("kernel", "build", "--name", "micro", "--config-fragment", str(bad))
    assert res.returncode != 0
    assert "CONFIG_VIRTIO_BLK is required by banger" in res.stderr
    assert f"remove it from {bad}" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(cli("kernel", "list", "--json").stdout) == []

    missing = cli("kernel", "build", "--config-fragment", str(tmp_path / "nope.config"))
    assert missing.returncode == 2 and "nope.config: No such file" in missing.stderr
    assert "Errno" not in missing.stderr, missing.stderr

    res = cli("kernel", "build", "--name", "micro", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "kernel micro ready: 6.1.999-banger" in res.stdout
    k = json.loads(cli("kernel", "show", "micro", "--json").stdout)
    assert k["kind"] == "built" and k["initrd"] is None
    assert (k["package"], k["version"]) == (pkg.name, pkg.version)
    assert k["config_sha256"] and k["fragment_sha256"]
    assert "micro" in cli("kernel", "list").stdout

    assert cli("kernel", "rm", "micro").returncode == 0
    assert json.loads(cli("kernel", "list", "--json").stdout) == []
