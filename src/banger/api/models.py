"""Typed API models (v1). The daemon serialises these; the client parses them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from banger.engine_names import EngineChoice

OpState = Literal["running", "succeeded", "failed", "cancelled"]


class ErrorBody(BaseModel):
    code: str
    message: str
    hint: str = ""


class Status(BaseModel):
    version: str
    api: str
    pid: int
    uptime_s: float
    socket: str
    dirs: dict[str, str]
    vms_running: int = 0
    # VM operations beyond the basic lifecycle that this daemon offers (e.g.
    # "suspend", "snapshot"); surfaces such as the TUI show an action only when listed.
    features: list[str] = Field(default_factory=list)


class OperationEvent(BaseModel):
    seq: int
    time: float
    stage: str
    detail: str = ""
    fraction: float | None = None


class Operation(BaseModel):
    id: str
    kind: str
    target: str
    state: OpState
    created_at: float
    finished_at: float | None = None
    stage: str = ""
    result: Any = None
    error: ErrorBody | None = None


class CheckResult(BaseModel):
    group: str
    name: str
    status: Literal["ok", "warn", "fail"]
    detail: str
    fix: str = ""


class DoctorReport(BaseModel):
    checks: list[CheckResult]

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)


class Kernel(BaseModel):
    name: str
    path: str
    vmlinux: str
    initrd: str | None = None  # None: boots without an initramfs (a built kernel)
    kind: Literal["pulled", "built"] = "pulled"
    package: str = ""  # linux-image-* (pulled) or linux-source-* (built)
    version: str = ""  # that Debian package's version
    kernel_release: str = ""  # `uname -r` in the guest
    config_sha256: str = ""  # built: the final .config
    fragment_sha256: str = ""  # built: the config fragments it was made from
    created_at: float = 0.0
    size_bytes: int = 0


class KernelBuild(BaseModel):
    """`banger kernel build`: the fragment travels as text (`fragment_origin` names
    the file it came from, for messages)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "micro-6.1"
    source: str = "linux-source-6.1"
    fragment: str | None = Field(default=None, max_length=1_000_000)
    fragment_origin: str | None = None
    jobs: int = Field(default=0, ge=0, le=1024)


class Image(BaseModel):
    name: str
    managed: bool
    rootfs: str
    work_seed: str | None = None
    kernel: str | None = None
    vmlinux: str | None = None
    initrd: str | None = None
    size_bytes: int = 0
    created_at: float = 0.0
    info: dict[str, Any] = Field(default_factory=dict)
    # The least memory a VM of it may have (`vm create`/`vm set` refuse less) and why.
    min_memory_mib: int = 0
    min_memory_reason: str = ""


class PublishedPort(BaseModel):
    """A published port: host `host_addr:host_port/proto` → the VM's `guest_port`."""

    proto: Literal["tcp", "udp"]
    host_addr: str
    host_port: int
    guest_port: int
    spec: str  # as `--publish` takes it


class Snapshot(BaseModel):
    """A named snapshot: a VM's memory, device state and both disks, taken while
    paused. Everything a fork needs: the files, the machine shape and the source."""

    id: str
    name: str
    state: Literal["creating", "ready"]
    vm: str  # the source VM's name when taken
    vm_id: str
    vm_state: str  # running or suspended when taken
    image: str
    kernel: str
    engine: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    work_bytes: int
    nat: bool
    dir: str
    rootfs: str
    work: str
    state_dir: str
    size_bytes: int
    created_at: float
    info: dict[str, Any] = {}


class VM(BaseModel):
    id: str
    name: str
    state: Literal[
        "creating",
        "starting",
        "running",
        "stopping",
        "stopped",
        "deleting",
        "error",
        "suspending",
        "suspended",
        "resuming",
    ]
    image: str
    kernel: str
    engine: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    work_bytes: int
    nat: bool
    ip: str | None
    mac: str
    tap: str | None
    vsock_cid: int | None = None
    # The guest agent's channel while running: "hybrid-vsock" (Firecracker),
    # "vsock" (QEMU with /dev/vhost-vsock) or "virtio-serial" (QEMU without).
    agent: str | None = None
    pid: int | None = None
    created_at: float
    started_at: float | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    last_error: str | None = None
    dir: str = ""
    ports: list[PublishedPort] = Field(default_factory=list)


class PublishPorts(BaseModel):
    specs: list[str]


class _Request(BaseModel):
    """A request body: unknown fields are refused and types are strict (no `"2"` or
    `true` where an integer belongs)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CreateVM(_Request):
    """`name` absent (None) generates one; an explicit empty name is refused."""

    name: str | None = None
    image: str | None = None
    kernel: str | None = None
    engine: EngineChoice | None = None
    vcpus: int | None = None
    memory: str | None = None
    disk_size: str | None = None
    work_size: str | None = None
    nat: bool = False
    publish: list[str] = Field(default_factory=list)  # [ADDR:]HOST_PORT:GUEST_PORT[/udp]
    cold: bool = False  # boot even when a golden snapshot could be restored
    from_snapshot: str | None = None  # a fork: restore this named snapshot, own identity


class SetVM(_Request):
    vcpus: int | None = None
    memory: str | None = None
    nat: bool | None = None


class PullOciImage(_Request):
    """`image pull REF` of an OCI image (registry reference or archive path)."""

    ref: str
    name: str | None = None  # default: from the reference (127.0.0.1:5000/test/app:1 -> test-app)
    authfile: str | None = None  # containers auth file; the CLI sends the user's default
    insecure: bool = False  # plain HTTP / unverified TLS to the registry


class RegisterImage(_Request):
    name: str
    rootfs: str
    work_seed: str | None = None
    kernel: str | None = None
    vmlinux: str | None = None
    initrd: str | None = None


class BuildImage(_Request):
    """`image build`: provision a VM booted from `base`, publish its disks as `name`.
    Host paths are absolute (the daemon reads them); see banger.imagespec."""

    name: str
    base: str
    size: str | None = None  # grow the base's rootfs to this; default: the base's size
    packages: list[str] = Field(default_factory=list)
    scripts: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)  # SRC:DST
    nat: bool = False  # scripts get the internet too (apt always does)


class TakeSnapshot(_Request):
    name: str | None = None  # default: <vm>-<UTC timestamp>
