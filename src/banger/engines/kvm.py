"""Can /dev/kvm actually run a guest here? A real probe, remembered on disk.

`os.access("/dev/kvm")` is not enough: nested hosts often expose a /dev/kvm that
opens, creates VMs and even runs trivial code, yet cannot run a standard guest
(QEMU aborts setting MSRs the outer hypervisor does not virtualise). So the probe
goes as far as a hypervisor would:

1. open /dev/kvm, KVM_GET_API_VERSION == 12, KVM_CREATE_VM, KVM_CREATE_VCPU, put
   the vCPU in 64-bit long mode on a hand-built page table and KVM_RUN a `hlt`,
   expecting KVM_EXIT_HLT. This runs in a throwaway Python process (this file run
   as a script) so a wedged KVM_RUN can never hang the daemon;
2. when QEMU is installed, initialise a `-accel kvm -cpu host` microvm machine
   paused (`-S`) and quit it over QMP: this is where such hosts fail.

Each probe costs well under a second; the result is cached as JSON keyed by the
kernel release, the /dev/kvm inode/ctime and the QEMU binary, so later calls are
instant and a reboot, module reload or QEMU upgrade re-probes.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import re
import signal
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEVICE = "/dev/kvm"

# ioctl numbers from <linux/kvm.h> (x86-64).
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_EXIT_HLT = 5
_SREGS_SIZE = 312
_REGS_SIZE = 144


@dataclass(frozen=True)
class KvmStatus:
    usable: bool
    reason: str  # "KVM works" or what failed, for doctor and error messages
    cached: bool = False


def _cpu_hint() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    if " vmx" not in flags and " svm" not in flags:
        return " (the CPU exposes no VMX/SVM: nested virtualization is not enabled)"
    return ""


def _ioctl_probe(device: str) -> KvmStatus:
    """Runs in the probe child: everything up to executing real guest code."""
    try:
        kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return KvmStatus(False, f"{device} does not exist (kvm module not loaded?){_cpu_hint()}")
    except PermissionError:
        return KvmStatus(False, f"no permission to open {device} (join the `kvm` group)")
    try:
        version = fcntl.ioctl(kvm, KVM_GET_API_VERSION)
        if version != 12:
            return KvmStatus(False, f"KVM_GET_API_VERSION returned {version}, expected 12")
        try:
            vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        except OSError as exc:
            return KvmStatus(False, f"KVM_CREATE_VM failed: {exc.strerror}{_cpu_hint()}")
        return _run_hlt(kvm, vm)
    except OSError as exc:
        return KvmStatus(False, f"KVM ioctl failed: {exc}{_cpu_hint()}")


def _run_hlt(kvm: int, vm: int) -> KvmStatus:
    """Identity-map 2 MiB, enter 64-bit mode at 0x1000 and run `cpuid; hlt`."""
    size = 0x10000
    mem = mmap.mmap(-1, size)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("=IIQQQ", 0, 0, 0, size, addr))
    mem[0x1000:0x1005] = bytes([0x31, 0xC0, 0x0F, 0xA2, 0xF4])  # xor eax,eax; cpuid; hlt
    struct.pack_into("=Q", mem, 0x2000, 0x3000 | 3)  # PML4 -> PDPT
    struct.pack_into("=Q", mem, 0x3000, 0x4000 | 3)  # PDPT -> PD
    struct.pack_into("=Q", mem, 0x4000, 0x83)  # one 2 MiB page at 0
    try:
        vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    except OSError as exc:
        return KvmStatus(False, f"KVM_CREATE_VCPU failed: {exc.strerror}")
    run = mmap.mmap(vcpu, fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE))
    sregs = bytearray(_SREGS_SIZE)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    # kvm_segment: base, limit, selector, type, present, dpl, db, s, l, g, avl, unusable, pad
    struct.pack_into("=QIHBBBBBBBBBB", sregs, 0, 0, 0xFFFFFFFF, 8, 11, 1, 0, 0, 1, 1, 1, 0, 0, 0)
    for i in range(1, 6):  # ds es fs gs ss
        struct.pack_into(
            "=QIHBBBBBBBBBB", sregs, i * 24, 0, 0xFFFFFFFF, 16, 3, 1, 0, 1, 1, 0, 1, 0, 0, 0
        )
    # cr0 (PG|PE|...), cr2, cr3 (PML4), cr4 (PAE), cr8, efer (LME|LMA)
    struct.pack_into("=QQQQQQ", sregs, 8 * 24 + 32, 0x80050033, 0, 0x2000, 0x20, 0, 0x500)
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(_REGS_SIZE)
    struct.pack_into("=QQ", regs, 16 * 8, 0x1000, 0x2)  # rip, rflags
    fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))
    try:
        fcntl.ioctl(vcpu, KVM_RUN, 0)
    except OSError as exc:
        return KvmStatus(False, f"KVM_RUN failed: {exc.strerror}{_cpu_hint()}")
    reason = struct.unpack_from("=I", run, 8)[0]
    if reason != KVM_EXIT_HLT:
        return KvmStatus(False, f"test guest exited with KVM exit reason {reason}, not HLT")
    return KvmStatus(True, "KVM works")


def _child_probe(device: str) -> KvmStatus:
    from banger.system import run

    # Run this file as a script (stdlib only), not `-m banger.engines.kvm`, which would
    # import the whole engines package (httpx, qemu.qmp) just to make five ioctls.
    res = run([sys.executable, "-I", __file__, device], check=False, timeout=15)
    try:
        data = json.loads(res.out)
        return KvmStatus(bool(data["usable"]), str(data["reason"]))
    except (ValueError, KeyError, TypeError):
        err = res.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return KvmStatus(False, f"KVM probe crashed (exit {res.returncode}): {' '.join(err)}")


def _qemu_probe(qemu_bin: str) -> KvmStatus:
    from banger.errors import CommandFailed
    from banger.system import run

    argv = [qemu_bin, "-accel", "kvm", "-cpu", "host", "-M", "microvm", "-nodefaults"]
    argv += ["-no-user-config", "-display", "none", "-S", "-qmp", "stdio"]
    qmp = b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n'
    try:
        res = run(argv, check=False, input=qmp, timeout=15)
    except CommandFailed as exc:
        return KvmStatus(False, f"qemu -accel kvm did not answer: {exc}")
    if res.returncode == 0:
        return KvmStatus(True, "KVM works")
    lines = [ln for ln in res.stderr.decode(errors="replace").splitlines() if ln.strip()]
    # QEMU prefixes its messages with its own name: drop it, we say "qemu" already.
    msg = re.sub(r"^\S*qemu[^:\s]*: ", "", lines[0]) if lines else f"exit {res.returncode}"
    return KvmStatus(False, f"qemu -accel kvm -cpu host failed: {msg}{_cpu_hint()}")


def _cache_key(device: str, qemu_bin: str | None) -> dict[str, Any]:
    try:
        st = os.stat(device)
        dev: list[int] | None = [st.st_ino, st.st_ctime_ns, st.st_rdev]
    except OSError:
        dev = None
    qemu: list[Any] | None = None
    if qemu_bin:
        try:
            qemu = [qemu_bin, os.stat(qemu_bin).st_mtime_ns]
        except OSError:
            qemu = [qemu_bin, None]
    return {"kernel": os.uname().release, "device": dev, "qemu": qemu}


def probe_kvm(
    cache_file: Path | None = None,
    *,
    qemu_bin: str | None = None,
    device: str = DEVICE,
    refresh: bool = False,
) -> KvmStatus:
    """Whether KVM can run a guest, with a human reason; cached in `cache_file`."""
    key = _cache_key(device, qemu_bin)
    if cache_file is not None and not refresh:
        try:
            data = json.loads(cache_file.read_text())
            if data.get("key") == key:
                return KvmStatus(bool(data["usable"]), str(data["reason"]), cached=True)
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    status = _child_probe(device) if key["device"] else _ioctl_probe(device)
    if status.usable and qemu_bin:
        status = _qemu_probe(qemu_bin)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        record = {"key": key, "usable": status.usable, "reason": status.reason}
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(cache_file)
    return status


class _Wedged(Exception):  # deliberately not an OSError: the probe catches those
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Wedged


def _main() -> None:
    # A KVM_RUN that never returns is the failure we guard against; the parent's
    # timeout is the backstop, this alarm gives a clean message first.
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(10)
    try:
        status = _ioctl_probe(sys.argv[1] if len(sys.argv) > 1 else DEVICE)
    except _Wedged:
        status = KvmStatus(False, f"the KVM test guest did not halt within 10 s{_cpu_hint()}")
    print(json.dumps({"usable": status.usable, "reason": status.reason}))


if __name__ == "__main__":
    _main()
