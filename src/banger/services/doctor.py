"""Host readiness checks, shared by `banger doctor` and the daemon.

Each check returns a `CheckResult` with a status and, when not ok, the fix. The
daemon calls the same functions before acting (e.g. `require_tool` on create),
so doctor never says "ok" for something the daemon would refuse.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from banger.api.models import CheckResult, DoctorReport
from banger.config import Config
from banger.paths import Paths
from banger.system import TOOLS, find_tool, is_root, sudo_ready

GIB = 1024**3


def check_tools() -> list[CheckResult]:
    out = []
    for tool in TOOLS.values():
        if tool.name in ("firecracker", "resolvectl") or (tool.name == "sudo" and is_root()):
            # (resolvectl: the dns group says what it is for and the whole fix)
            continue
        path = find_tool(tool.name)
        needed = ", ".join(tool.required_for) or "optional"
        if path:
            out.append(CheckResult(group="tools", name=tool.name, status="ok", detail=path))
        else:
            out.append(
                CheckResult(
                    group="tools",
                    name=tool.name,
                    status="fail" if tool.required_for else "warn",
                    detail=f"missing ({tool.purpose}; needed for: {needed})",
                    fix=f"apt-get install {tool.package}"
                    if not tool.package.startswith("(")
                    else "install it from its upstream release and put it on PATH "
                    "(or set firecracker_bin)",
                )
            )
    return out


def check_kvm(paths: Paths, config: Config) -> list[CheckResult]:
    """The same probe the QEMU engine runs before choosing KVM or TCG (cached)."""
    from banger.engines import KVM_CACHE_FILE, probe_kvm

    if not os.path.exists("/dev/kvm"):
        return [
            CheckResult(
                group="virtualization",
                name="kvm",
                status="warn",
                detail="/dev/kvm is missing: VMs run under TCG software emulation (slow)",
                fix="enable virtualization in firmware and load kvm_intel or kvm_amd",
            )
        ]
    qemu = config.qemu_bin or find_tool("qemu-system-x86_64")
    probe = probe_kvm(paths.state_dir / KVM_CACHE_FILE, qemu_bin=qemu)
    return [
        CheckResult(
            group="virtualization",
            name="kvm",
            status="ok" if probe.usable else "warn",
            detail=(probe.reason if probe.usable else f"cannot run a guest: {probe.reason}")
            + (" (cached probe)" if probe.cached else ""),
            fix=""
            if probe.usable
            else "VMs fall back to TCG software emulation (boots take ~15 s instead of ~1 s); "
            "on a nested host enable nested virtualization, or check `kvm` group access",
        )
    ]


def check_engines(paths: Paths, config: Config) -> list[CheckResult]:
    """Each engine's own availability report: what `engine = "auto"` will pick from."""
    from banger.engines import KVM_CACHE_FILE, FirecrackerEngine, QemuEngine

    cache = paths.state_dir / KVM_CACHE_FILE
    qemu = QemuEngine(config.qemu_bin, kvm_cache=cache).availability()
    fc = FirecrackerEngine(config.firecracker_bin, kvm_cache=cache).availability()
    return [
        CheckResult(
            group="engines",
            name=QemuEngine.name,
            status="ok" if qemu.ok else "fail",
            detail=qemu.detail,
            fix="" if qemu.ok else "apt-get install qemu-system-x86",
        ),
        CheckResult(
            group="engines",
            name=FirecrackerEngine.name,
            status="ok" if fc.ok else "warn",
            detail=fc.detail if fc.ok else f"not usable (optional; QEMU is used): {fc.detail}",
            fix=""
            if fc.ok
            else "install a Firecracker release on PATH (or set firecracker_bin) "
            "on a host where KVM works",
        ),
    ]


def check_privileges() -> list[CheckResult]:
    if is_root():
        return [CheckResult(group="privileges", name="root", status="ok", detail="running as root")]
    ok = sudo_ready()
    return [
        CheckResult(
            group="privileges",
            name="sudo",
            status="ok" if ok else "fail",
            detail="passwordless sudo works" if ok else "sudo -n would prompt for a password",
            fix="" if ok else "allow passwordless sudo for ip and nft, or run the daemon as root",
        )
    ]


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def check_dirs(paths: Paths) -> list[CheckResult]:
    out = []
    for label, d in (
        ("config", paths.config_dir),
        ("state", paths.state_dir),
        ("data", paths.data_dir),
        ("runtime", paths.runtime_dir),
    ):
        ok = _writable(d)
        out.append(
            CheckResult(
                group="dirs",
                name=label,
                status="ok" if ok else "fail",
                detail=str(d),
                fix="" if ok else f"make {d} writable by you",
            )
        )
    probe = paths.data_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    status = "ok" if free >= 5 * GIB else "warn" if free >= GIB else "fail"
    out.append(
        CheckResult(
            group="dirs",
            name="free disk",
            status=status,
            detail=f"{free / GIB:.1f} GiB free under {probe}",
            fix="" if status == "ok" else "free space: an image needs ~1.5 GiB, each VM more",
        )
    )
    return out


def check_artifacts(paths: Paths, config: Config) -> list[CheckResult]:
    out = []
    for kind, name, d in (
        ("kernel", config.default_kernel, paths.kernels_dir / config.default_kernel),
        ("image", config.default_image, paths.images_dir / config.default_image),
    ):
        ok = d.is_dir()
        out.append(
            CheckResult(
                group="artifacts",
                name=f"{kind} {name}",
                status="ok" if ok else "warn",
                detail=str(d) if ok else "not pulled yet",
                fix="" if ok else f"`banger {kind} pull {name}` (vm run pulls it automatically)",
            )
        )
    return out


def check_host_dns(paths: Paths, config: Config) -> list[CheckResult]:
    """Does the host send `*.vm` to the daemon (`banger dns setup`)?"""
    from banger.net import addresses, resolved

    def result(status: str, detail: str, fix: str = "") -> list[CheckResult]:
        return [CheckResult(group="dns", name="host .vm", status=status, detail=detail, fix=fix)]

    why = resolved.unavailable()
    if why is not None:
        fix = resolved.fix_hint(addresses.gateway(config.subnet))
        return result("warn", f"{why}: `NAME.vm` does not resolve on the host", fix)
    if not (paths.state_dir / "host-dns.json").exists():
        return result(
            "warn", "systemd-resolved runs, but `.vm` is not routed to banger", "`banger dns setup`"
        )
    try:
        link = resolved.link(config.bridge_name)
    except Exception as exc:  # resolved answering oddly: say so, do not crash doctor
        return result("warn", f"cannot read resolved's settings: {exc}", "`resolvectl status`")
    if "~vm" in link.domains:
        servers = " ".join(link.servers)
        return result("ok", f"{config.bridge_name} sends ~vm to {servers}")
    return result(
        "warn",
        f"set up, but not active on {config.bridge_name} (the bridge is made on first VM use "
        "and the daemon re-applies it then)",
        "start a VM, or `banger dns setup` again",
    )


def run_doctor(paths: Paths, config: Config) -> DoctorReport:
    checks: list[Callable[[], list[CheckResult]]] = [
        check_tools,
        lambda: check_kvm(paths, config),
        lambda: check_engines(paths, config),
        check_privileges,
        lambda: check_dirs(paths),
        lambda: check_artifacts(paths, config),
        lambda: check_host_dns(paths, config),
    ]
    results: list[CheckResult] = []
    for check in checks:
        results.extend(check())
    return DoctorReport(checks=results)
