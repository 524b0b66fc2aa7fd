"""`banger tui`: VMs, images, kernels, operations and doctor in one terminal screen.

The UI thread never talks to the daemon. Worker threads do, through the public
client: a poller reads VMs and operations about once a second (and at once after an
action), a slower one asks running guests' agents for load and memory, and one
follower per running operation streams its progress events. Results come back with
`call_from_thread` and update table cells in place (no rebuild, so no flicker and
the cursor stays put). When the daemon stops answering the screen says so and keeps
retrying; when it is back the tables fill again.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Input, Static, TabbedContent, TabPane

from banger.api.models import VM, CreateVM, DoctorReport, Image, Kernel, Operation, Status
from banger.cli.output import health_color, health_rows
from banger.client import Client
from banger.errors import BangerError, DaemonUnavailable
from banger.paths import Paths, default_paths
from banger.tui.actions import BY_ID, VM_ACTIONS, VMAction
from banger.tui.screens import Confirm, CreateForm, Details, Logs, Ports, Prompt, error_text
from banger.units import format_duration, format_size, format_time

STATE_STYLE = {
    "running": "green",
    "stopped": "dim",
    "error": "red",
    "creating": "yellow",
    "suspended": "cyan",
}
OP_KEEP_S = 15.0  # finished operations stay in the panel this long
AGENT_EVERY_S = 3.0
ARTIFACTS_EVERY_S = 5.0


def _human(n: int) -> str:
    """A short size for a table cell: 66M, 1.4G, 512M."""
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size:
            v = n / size
            return f"{v:.1f}{unit}" if v < 10 and unit in "GT" else f"{v:.0f}{unit}"
    return f"{n}B"


def _bar(fraction: float | None, width: int = 10) -> str:
    if fraction is None:
        return ""
    f = min(max(fraction, 0.0), 1.0)
    full = int(f * width)
    return "█" * full + "░" * (width - full) + f" {f * 100:3.0f}%"


@dataclass
class OpView:
    op: Operation
    stage: str = ""
    detail: str = ""
    fraction: float | None = None
    seen: float = field(default_factory=time.monotonic)


class Table(DataTable[Any]):
    """A DataTable updated in place from a list of rows keyed by id."""

    def __init__(self, columns: Sequence[tuple[str, str]], **kw: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kw)
        self._columns = columns
        self._cells: dict[str, tuple[Any, ...]] = {}

    def on_mount(self) -> None:
        for key, label in self._columns:
            self.add_column(label, key=key)

    def sync(self, rows: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        seen: set[str] = set()
        for key, cells in rows:
            seen.add(key)
            old = self._cells.get(key)
            if old is None:
                self.add_row(*cells, key=key)
            elif old != cells:
                for (col, _), a, b in zip(self._columns, old, cells, strict=True):
                    if a != b:
                        self.update_cell(key, col, b, update_width=True)
            self._cells[key] = cells
        for key in [k for k in self._cells if k not in seen]:
            self.remove_row(key)
            del self._cells[key]

    def reset(self) -> None:
        self.clear()
        self._cells.clear()

    def current_key(self) -> str | None:
        if self.row_count == 0:
            return None
        with contextlib.suppress(Exception):
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
            return str(key) if key is not None else None
        return None


VM_COLUMNS = (
    ("mark", " "),
    ("name", "name"),
    ("state", "state"),
    ("ip", "ip"),
    ("vcpus", "cpu"),
    ("memory", "mem"),
    ("uptime", "uptime"),
    ("load", "load"),
    ("gmem", "guest mem"),
    ("nat", "nat"),
    ("image", "image"),
    ("engine", "engine"),
)


def _ip_key(vm: VM) -> Any:
    return tuple(int(p) for p in vm.ip.split(".")) if vm.ip else (999,)


# What a click on a column header sorts by.
SORT_KEYS: dict[str, Callable[[VM], Any]] = {
    "name": lambda v: v.name,
    "state": lambda v: v.state,
    "ip": _ip_key,
    "vcpus": lambda v: v.vcpus,
    "memory": lambda v: v.memory_mib,
    "uptime": lambda v: -(v.started_at or 0) if v.state == "running" else float("inf"),
    "nat": lambda v: v.nat,
    "image": lambda v: v.image,
    "engine": lambda v: v.engine,
}


def _vm_bindings() -> list[BindingType]:
    out: list[BindingType] = [
        Binding("n", "create", "New"),
    ]
    for a in VM_ACTIONS:
        out.append(Binding(a.key, f"vm('{a.id}')", a.label, show=a.show, key_display=a.key_display))
    out += [
        Binding("space", "mark", "Mark", show=True, key_display="␣"),
        Binding("a", "mark_all", "Mark all", show=False),
        Binding("escape", "unmark", "Clear marks", show=False),
        Binding("slash", "filter", "Filter", show=False, key_display="/"),
        Binding("delete", "vm('delete')", "Delete", show=False),
    ]
    return out


class VMTable(Table):
    BINDINGS: ClassVar[list[BindingType]] = _vm_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        app = self.app
        if action == "vm" and isinstance(app, BangerApp) and parameters:
            a = BY_ID.get(str(parameters[0]))
            c = app.client
            if a is None or (c is not None and not a.supported(c, app.vm_features)):
                return False  # hidden: this daemon does not offer it
        return True

    def action_create(self) -> None:
        self._banger().open_create()

    def action_vm(self, action_id: str) -> None:
        self._banger().vm_action(BY_ID[action_id])

    def action_mark(self) -> None:
        self._banger().toggle_mark()

    def action_mark_all(self) -> None:
        self._banger().mark_all()

    def action_unmark(self) -> None:
        self._banger().clear_marks()

    def action_filter(self) -> None:
        self._banger().open_filter()

    def _banger(self) -> BangerApp:
        app = self.app
        assert isinstance(app, BangerApp)
        return app


class ArtifactTable(Table):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pull", "Pull"),
        Binding("i,enter", "show", "Show"),
        Binding("x,delete", "rm", "Remove"),
    ]

    def __init__(self, kind: str, columns: Sequence[tuple[str, str]], **kw: Any) -> None:
        super().__init__(columns, **kw)
        self.kind = kind

    def action_pull(self) -> None:
        app = self.app
        assert isinstance(app, BangerApp)
        app.pull_artifact(self.kind, self.current_key())

    def action_show(self) -> None:
        app = self.app
        assert isinstance(app, BangerApp)
        app.show_artifact(self.kind, self.current_key())

    def action_rm(self) -> None:
        app = self.app
        assert isinstance(app, BangerApp)
        app.remove_artifact(self.kind, self.current_key())


class OpsTable(Table):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("c", "cancel", "Cancel op")]

    def action_cancel(self) -> None:
        app = self.app
        assert isinstance(app, BangerApp)
        app.cancel_operation(self.current_key())


class DoctorView(VerticalScroll):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("g", "rerun", "Re-run checks")]
    can_focus = True

    def compose(self) -> ComposeResult:
        yield Static("[dim]press g to run the checks[/]", id="doctor-body")

    def action_rerun(self) -> None:
        app = self.app
        assert isinstance(app, BangerApp)
        app.run_doctor()


class BangerApp(App[None]):
    TITLE = "banger"
    CSS = """
    Screen { layout: vertical; }
    #topbar { height: 1; background: $boost; padding: 0 1; }
    #banner { height: auto; max-height: 3; padding: 0 1; display: none; }
    #banner.offline { display: block; background: $error 30%; }
    #banner.info { display: block; background: $primary 20%; }
    TabbedContent { height: 1fr; }
    TabPane { padding: 0; }
    #filter { display: none; height: 1; border: none; padding: 0 1; }
    #filter.shown { display: block; }
    #ops { height: auto; max-height: 6; display: none; border-top: solid $primary 40%; }
    #ops.shown { display: block; }
    #msg { height: auto; max-height: 3; padding: 0 1; }
    Table.stale { text-opacity: 50%; }
    .dialog { width: 72; max-width: 100%; height: auto; max-height: 100%;
              border: thick $primary 60%; background: $surface; padding: 0 1; }
    .dialog.wide { width: 100; }
    .dialog.full { width: 100%; height: 100%; }
    .dialog .title { text-style: bold; width: 100%; padding: 0 0 1 0; }
    .dialog .scroll { height: auto; max-height: 16; }
    .dialog Log { height: 1fr; }
    .form .row { height: 1; margin-bottom: 1; }
    .form .label { width: 12; }
    .form Input { width: 1fr; }
    .form Select { width: 1fr; }
    .buttons { height: 1; margin-top: 1; align-horizontal: right; }
    .buttons Button { margin-left: 1; }
    ModalScreen { align: center middle; }
    #form-error { height: auto; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "keys", "Keys", key_display="?"),
        Binding("1", "tab('vms')", "VMs", show=False),
        Binding("2", "tab('images')", "Images", show=False),
        Binding("3", "tab('kernels')", "Kernels", show=False),
        Binding("4", "tab('doctor')", "Doctor", show=False),
        Binding("c", "cancel_op", "Cancel op"),
        Binding("o", "focus_ops", "Operations", show=False),
        Binding("D", "start_daemon", "Start daemon"),
    ]

    def __init__(
        self,
        paths: Paths | None = None,
        *,
        interval: float = 0.8,
        autostart: bool = True,
    ) -> None:
        super().__init__()
        self.paths = paths or default_paths()
        self.interval = interval
        self.autostart = autostart
        self.client: Client | None = None
        self.online: bool | None = None
        self.status: Status | None = None
        self.vm_features: frozenset[str] = frozenset()
        self.started_pid: int | None = None
        self.vms: dict[str, VM] = {}  # by id, in the daemon's order
        self.marked: set[str] = set()
        self.filter_text = ""
        self.agent_info: dict[str, dict[str, Any]] = {}
        self.ops: dict[str, OpView] = {}
        self.mine: dict[str, str] = {}  # operation id -> what the user asked for
        self.images: list[Image] = []
        self.kernels: list[Kernel] = []
        self.config_values: dict[str, Any] = {}
        self._following: set[str] = set()
        self._wake = threading.Event()
        self._artifacts_due = 0.0
        self._stopping = threading.Event()
        self._busy = False
        self.sort_by: tuple[str, bool] | None = None  # (column, reversed)

    # -- layout ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("banger · connecting to the daemon…", id="topbar")
        yield Static("", id="banner")
        with TabbedContent(initial="vms"):
            with TabPane("VMs", id="vms"):
                yield Input(placeholder="filter by name (enter: apply, escape: clear)", id="filter")
                yield VMTable(VM_COLUMNS, id="vm-table")
            with TabPane("Images", id="images"):
                yield ArtifactTable(
                    "image",
                    (
                        ("name", "name"),
                        ("managed", "managed"),
                        ("kernel", "kernel"),
                        ("seed", "work-seed"),
                        ("size", "size"),
                        ("created", "created"),
                    ),
                    id="image-table",
                )
            with TabPane("Kernels", id="kernels"):
                yield ArtifactTable(
                    "kernel",
                    (
                        ("name", "name"),
                        ("package", "package"),
                        ("version", "version"),
                        ("size", "size"),
                        ("created", "pulled"),
                    ),
                    id="kernel-table",
                )
            with TabPane("Doctor", id="doctor"):
                yield DoctorView(id="doctor-view")
        yield OpsTable(
            (
                ("what", "operation"),
                ("stage", "stage"),
                ("progress", "progress"),
                ("state", "state"),
                ("age", "age"),
            ),
            id="ops",
        )
        yield Static("", id="msg")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        # The main screen's widgets, kept so updates reach them while a dialog is open.
        self.w_topbar = self.query_one("#topbar", Static)
        self.w_banner = self.query_one("#banner", Static)
        self.w_msg = self.query_one("#msg", Static)
        self.w_vms = self.query_one("#vm-table", VMTable)
        self.w_ops = self.query_one("#ops", OpsTable)
        self.w_images = self.query_one("#image-table", ArtifactTable)
        self.w_kernels = self.query_one("#kernel-table", ArtifactTable)
        self.w_doctor = self.query_one("#doctor-body", Static)
        self.w_filter = self.query_one("#filter", Input)
        self.w_tabs = self.query_one(TabbedContent)
        self.w_vms.focus()
        self.run_worker(self._poll_loop, thread=True, group="poll", name="poll")
        self.run_worker(self._agent_loop, thread=True, group="agent", name="agent")
        self.set_interval(1.0, self._tick)

    def on_unmount(self) -> None:
        self._stopping.set()
        self._wake.set()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start_daemon":
            return self.online is False
        if action == "cancel_op":
            return any(v.op.state == "running" for v in self.ops.values())
        return True

    # -- talking to the daemon (worker threads only) -------------------------------------

    def _ui(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn` on the UI thread; quietly nothing once the app is closing."""
        if self._stopping.is_set():
            return
        with contextlib.suppress(RuntimeError):
            self.call_from_thread(fn, *args)

    def _connect(self, autostart: bool) -> Client:
        c = Client.connect(self.paths, autostart=autostart)
        if c.started_daemon_pid is not None:
            self.started_pid = c.started_daemon_pid
        return c

    def _poll_loop(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                if self.client is None:
                    self.client = self._connect(autostart=self.autostart and first)
                c = self.client
                if not self.online:
                    status = c.status()
                    with contextlib.suppress(BangerError):
                        self.config_values = {
                            v["key"]: v["value"] for v in c.config().get("values", [])
                        }
                    self._ui(self._went_online, status)
                    self._artifacts_due = 0.0
                vms, ops = c.vms(), c.operations()
                self._ui(self._apply, vms, ops)
                if time.monotonic() >= self._artifacts_due:
                    images, kernels = c.images(), c.kernels()
                    self._ui(self._apply_artifacts, images, kernels)
                    self._artifacts_due = time.monotonic() + ARTIFACTS_EVERY_S
            except DaemonUnavailable as exc:
                self._ui(self._went_offline, exc)
            except BangerError as exc:
                self._ui(self.show_error, exc)
            first = False
            self._wake.wait(self.interval if self.online else 1.0)
            self._wake.clear()

    def _agent_loop(self) -> None:
        """Guest load and memory from each running VM's agent (best effort)."""
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="agent") as pool:
            while not self._stopping.wait(AGENT_EVERY_S):
                c = self.client
                if c is None or not self.online:
                    continue
                running = [v.name for v in self.vms.values() if v.state == "running"]

                def one(name: str, c: Client = c) -> tuple[str, dict[str, Any] | None]:
                    try:
                        return name, c.vm_health(name)
                    except BangerError:
                        return name, None

                results = dict(pool.map(one, running))
                self._ui(self._apply_agent, results)

    def _follow(self, op_id: str) -> None:
        c = self.client
        if c is None:
            return
        try:
            for item in c.stream(op_id):
                if isinstance(item, Operation):
                    self._ui(self._op_final, item)
                else:
                    self._ui(self._op_event, op_id, item.stage, item.detail, item.fraction)
        except BangerError:
            pass
        finally:
            self._ui(self._following.discard, op_id)
            self._wake.set()

    def refresh_now(self) -> None:
        self._wake.set()

    # -- applying what the workers found (UI thread) -------------------------------------

    def _went_online(self, status: Status) -> None:
        was = self.online
        self.online = True
        self.status = status
        self.vm_features = frozenset(getattr(status, "features", ()) or ())
        banner = self.w_banner
        banner.remove_class("offline")
        self.w_vms.remove_class("stale")
        if self.started_pid is not None:
            banner.update(f"started the banger daemon (pid {self.started_pid})")
            banner.add_class("info")
            if was is None:
                self.notify(f"started the banger daemon (pid {self.started_pid})")
        else:
            banner.update("")
            banner.remove_class("info")
        if was is False:
            self.notify(f"the daemon is back (pid {status.pid})")
        self.refresh_bindings()
        self._update_topbar()

    def _went_offline(self, exc: BangerError) -> None:
        if self.online is not False:
            self.online = False
            self.w_vms.add_class("stale")
            self.agent_info.clear()
            self._following.clear()
            self.refresh_bindings()
        banner = self.w_banner
        banner.remove_class("info")
        banner.add_class("offline")
        text = f"the daemon is not answering on {escape(str(self.paths.socket))}"
        text += " — retrying every second; the list below is from before"
        text += "\n[dim]press D to start it (or `banger daemon start`)[/]"
        banner.update(text)
        self._update_topbar()

    def _apply(self, vms: list[VM], ops: list[Operation]) -> None:
        self.vms = {v.id: v for v in vms}
        self.marked &= set(self.vms)
        self._render_vms()
        now = time.time()
        for op in ops:
            view = self.ops.get(op.id)
            if view is None:
                finished_long_ago = op.finished_at and now - op.finished_at > OP_KEEP_S
                if finished_long_ago and op.id not in self.mine:
                    continue
                view = self.ops[op.id] = OpView(op, stage=op.stage)
            if view.op.state == "running":
                if op.state != "running":
                    view.seen = time.monotonic()  # finished: keep it in view a while
                    if op.kind.startswith(("image.", "kernel.")):
                        self._artifacts_due = 0.0
                view.op = op
                view.stage = view.stage or op.stage
            if op.state == "running" and op.id not in self._following:
                self._following.add(op.id)
                self.run_worker(
                    partial(self._follow, op.id), thread=True, group="follow", exit_on_error=False
                )
            elif op.state != "running" and op.id in self.mine:
                self._report(op)
        self._render_ops()
        self._update_topbar()

    def _apply_agent(self, results: dict[str, dict[str, Any] | None]) -> None:
        self.agent_info = {k: v for k, v in results.items() if v}
        self._render_vms()

    def _apply_artifacts(self, images: list[Image], kernels: list[Kernel]) -> None:
        self.images, self.kernels = images, kernels
        self.w_images.sync(
            (
                i.name,
                (
                    i.name,
                    "yes" if i.managed else "no",
                    i.kernel or (i.vmlinux or "-"),
                    "yes" if i.work_seed else "no (slow path)",
                    _human(i.size_bytes),
                    format_time(i.created_at),
                ),
            )
            for i in images
        )
        self.w_kernels.sync(
            (
                k.name,
                (k.name, k.package, k.version, _human(k.size_bytes), format_time(k.created_at)),
            )
            for k in kernels
        )

    def _op_event(self, op_id: str, stage: str, detail: str, fraction: float | None) -> None:
        view = self.ops.get(op_id)
        if view is None:
            return
        view.stage, view.detail, view.fraction = stage, detail, fraction
        self._render_ops()

    def _op_final(self, op: Operation) -> None:
        view = self.ops.setdefault(op.id, OpView(op))
        view.op = op
        view.seen = time.monotonic()
        if op.id in self.mine:
            self._report(op)
        if op.kind.startswith(("image.", "kernel.")):
            self._artifacts_due = 0.0
        self._render_ops()
        self.refresh_now()

    def _report(self, op: Operation) -> None:
        what = self.mine.pop(op.id, None)
        if what is None:
            return
        if op.state == "succeeded":
            msg = f"[green]✓[/] {escape(what)}"
            if op.kind == "vm.create" and isinstance(op.result, dict):
                msg += f" — running at {op.result.get('ip', '?')}"
            self.set_message(msg)
            self.notify(msg, timeout=4)
            return
        asked = f"{op.kind.rsplit('.', 1)[-1]} {op.target}"  # "create web", "pull debian-6.1"
        if op.state == "cancelled":
            self.set_message(f"[yellow]cancelled:[/] {escape(asked)}")
            self.notify(f"cancelled: {asked}", severity="warning")
        else:
            err = op.error
            exc = BangerError(err.message, err.hint) if err else BangerError(f"{asked} failed")
            self.show_error(exc, prefix=asked)

    def _tick(self) -> None:
        """Once a second: uptimes and operation ages move even without new data."""
        self._render_vms()
        self._render_ops()

    # -- rendering -------------------------------------------------------------------------

    def _vm_cells(self, vm: VM) -> tuple[Any, ...]:
        info = (self.agent_info.get(vm.name) or {}).get("info") or {}
        load = info.get("load")
        mem = info.get("memory") or {}
        gmem = "-"
        if vm.state == "running" and mem.get("total_bytes"):
            used = int(mem["total_bytes"]) - int(mem.get("available_bytes", 0))
            gmem = f"{_human(used)}/{_human(int(mem['total_bytes']))}"
        uptime = (
            format_duration(time.time() - vm.started_at)
            if vm.state == "running" and vm.started_at
            else "-"
        )
        return (
            "●" if vm.id in self.marked else " ",
            vm.name,
            Text(vm.state, style=STATE_STYLE.get(vm.state, "")),
            vm.ip or "-",
            str(vm.vcpus),
            format_size(vm.memory_mib * 1024**2),
            uptime,
            f"{load[0]:.2f}" if vm.state == "running" and load else "-",
            gmem,
            "yes" if vm.nat else "no",
            vm.image,
            vm.engine,
        )

    def _render_vms(self) -> None:
        table = self.w_vms
        f = self.filter_text
        table.sync((v.id, self._vm_cells(v)) for v in self.vms.values() if not f or f in v.name)
        if self.sort_by is not None:
            self._sort_vms()

    def _sort_vms(self) -> None:
        """Keep rows in the chosen column's order (set by clicking its header) without
        rebuilding the table, and keep the cursor on the same VM."""
        table = self.w_vms
        column, reverse = self.sort_by or ("name", False)
        by = SORT_KEYS[column]

        def key(vm_id: str) -> Any:
            vm = self.vms.get(vm_id)
            return (0, by(vm)) if vm else (1, 0)

        wanted = sorted((str(r.key.value) for r in table.ordered_rows), key=key, reverse=reverse)
        if [str(r.key.value) for r in table.ordered_rows] == wanted:
            return
        current = table.current_key()
        order = {k: i for i, k in enumerate(wanted)}
        table.sort(
            "name",
            key=lambda name: order.get(self._id_by_name(str(name)), 0),
        )
        if current is not None:
            table.move_cursor(row=table.get_row_index(current), animate=False)

    def _id_by_name(self, name: str) -> str:
        for vm_id, vm in self.vms.items():
            if vm.name == name:
                return vm_id
        return ""

    @on(DataTable.HeaderSelected, "#vm-table")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        column = str(event.column_key.value)
        if column not in SORT_KEYS:
            self.set_message(f"{column} is not sortable")
            return
        was = self.sort_by
        self.sort_by = (column, not was[1]) if was and was[0] == column else (column, False)
        self._sort_vms()
        arrow = "▼" if self.sort_by[1] else "▲"
        self.set_message(f"sorted by {column} {arrow} (click again to reverse)")

    def _render_ops(self) -> None:
        now = time.monotonic()
        wall = time.time()
        visible = []
        for op_id, view in list(self.ops.items()):
            op = view.op
            if op.state != "running" and now - view.seen > OP_KEEP_S:
                del self.ops[op_id]
                continue
            age = (op.finished_at or wall) - op.created_at
            style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(op.state, "")
            stage = view.stage or op.stage
            if view.detail:
                stage = f"{stage}: {view.detail}"
            visible.append(
                (
                    op_id,
                    (
                        f"{op.kind} {op.target}",
                        stage[:40],
                        _bar(view.fraction) if op.state == "running" else "",
                        Text(op.state, style=style),
                        format_duration(age),
                    ),
                )
            )
        table = self.w_ops
        table.sync(visible)
        table.set_class(bool(visible), "shown")
        busy = any(v.op.state == "running" for v in self.ops.values())
        if busy != self._busy:  # the footer's "cancel" key comes and goes
            self._busy = busy
            self.refresh_bindings()

    def _update_topbar(self) -> None:
        bar = self.w_topbar
        if self.online is None:
            bar.update("banger · connecting to the daemon…")
            return
        if not self.online:
            bar.update("banger · [red]daemon offline[/]")
            return
        st = self.status
        running = sum(v.state == "running" for v in self.vms.values())
        busy = sum(v.op.state == "running" for v in self.ops.values())
        parts = [
            "banger",
            f"daemon pid {st.pid}" if st else "daemon",
            f"{len(self.vms)} VMs ({running} running)",
        ]
        if self.marked:
            parts.append(f"{len(self.marked)} marked")
        if busy:
            parts.append(f"{busy} op{'s' if busy > 1 else ''} running")
        if self.filter_text:
            parts.append(f"filter: {escape(self.filter_text)}")
        bar.update(" · ".join(parts))

    def set_message(self, text: str) -> None:
        self.w_msg.update(text)

    def show_error(self, exc: BangerError, prefix: str = "") -> None:
        text = error_text(exc)
        if prefix:
            text = text.replace("error:[/] ", f"error:[/] {escape(prefix)}: ", 1)
        self.set_message(text)
        self.notify(text, severity="error", timeout=8, markup=True)

    # -- VM actions ------------------------------------------------------------------------

    def _vm_table(self) -> VMTable:
        return self.w_vms

    def highlighted_vm(self) -> VM | None:
        key = self._vm_table().current_key()
        return self.vms.get(key) if key else None

    def targets(self, action: VMAction) -> list[VM]:
        if action.multi and self.marked:
            return [v for k, v in self.vms.items() if k in self.marked]
        vm = self.highlighted_vm()
        return [vm] if vm else []

    def _require_client(self) -> Client | None:
        if self.client is None or not self.online:
            self.show_error(
                DaemonUnavailable(
                    "the banger daemon is not answering",
                    hint="press D to start it, or `banger daemon start`",
                )
            )
            return None
        return self.client

    def vm_action(self, action: VMAction) -> None:
        c = self._require_client()
        if c is None:
            return
        targets = self.targets(action)
        if not targets:
            self.set_message("no VM selected: `n` creates one")
            return
        fit = [v for v in targets if v.state in action.states]
        skipped = [v.name for v in targets if v.state not in action.states]
        if skipped:
            states = "/".join(sorted(action.states))
            self.set_message(f"{action.label.lower()} skips {', '.join(skipped)} (not {states})")
        if not fit:
            if len(targets) == 1:
                vm = targets[0]
                hint = {
                    "ssh": f"start it first (u), or `banger vm start {vm.name}`",
                    "stop": "nothing to stop; u starts it",
                    "restart": "u starts it",
                    "start": "it is already running; s stops it",
                    "ports": f"ports come from its running guest; u starts {vm.name}",
                }.get(action.id, "")
                self.show_error(BangerError(f"VM `{vm.name}` is {vm.state}", hint))
            return
        if action.kind == "op" and action.prompt:
            vm = fit[0]

            def then(text: str | None) -> None:
                if text is not None:
                    self._fan_out(action, [vm], text)

            self.push_screen(Prompt(action.prompt.format(name=vm.name), allow_empty=True), then)
        elif action.kind == "op":
            if action.confirm:
                self._confirm_then(action, fit)
            else:
                self._fan_out(action, fit)
        elif action.kind == "terminal" and action.prompt:
            vm = fit[0]

            def go(text: str | None) -> None:
                if text:
                    self._in_terminal(action, vm, text, pause=True)

            self.push_screen(Prompt(action.prompt.format(name=vm.name)), go)
        elif action.kind == "terminal":
            self._in_terminal(action, fit[0])
        else:
            self._open_view(action.id, fit[0])

    def _confirm_then(self, action: VMAction, vms: list[VM]) -> None:
        names = ", ".join(v.name for v in vms)
        running = [v.name for v in vms if v.state == "running"]
        body = f"{action.label} {names}?"
        if action.id == "delete":
            body = f"Delete {names} and everything they own (disks, address, TAP)?"
            if running:
                body += f"\n[b]{', '.join(running)} running: will be killed first.[/]"
        title = f"{action.label} {len(vms)} VM{'s' if len(vms) > 1 else ''}"

        def done(yes: bool | None) -> None:
            if yes:
                self._fan_out(action, vms)

        self.push_screen(Confirm(title, body, yes=action.label), done)

    def _fan_out(self, action: VMAction, vms: list[VM], text: str = "") -> None:
        assert action.run is not None
        self.set_message(f"{action.label.lower()}: {', '.join(v.name for v in vms)}…")
        for vm in vms:
            self.run_worker(
                partial(self._start_op, action, vm, text),
                thread=True,
                group="actions",
                exit_on_error=False,
            )
        if action.id == "delete":
            self.marked -= {v.id for v in vms}

    def _start_op(self, action: VMAction, vm: VM, text: str = "") -> None:
        c = self.client
        assert c is not None and action.run is not None
        try:
            op = action.run(c, vm, text)
        except BangerError as exc:
            self._ui(self.show_error, exc, f"{action.label.lower()} {vm.name}")
            return
        if isinstance(op, str):  # a direct change: done already
            self._ui(self.set_message, f"[green]✓[/] {escape(op)}")
        else:
            self._ui(self.mine.__setitem__, op.id, f"{vm.name} {action.verb}")
        self._wake.set()

    def _in_terminal(self, action: VMAction, vm: VM, text: str = "", pause: bool = False) -> None:
        """Suspend the TUI, run a real `banger` command in this terminal, come back."""
        assert action.argv is not None
        from banger.system import run_interactive

        args = action.argv(vm, text)
        argv = [sys.executable, "-m", "banger.cli", *args]
        try:
            with self.suspend():
                rc = run_interactive(argv)
                if pause:  # keep the output on screen until the user is done reading
                    with contextlib.suppress(EOFError, KeyboardInterrupt):
                        input(f"\n[exit {rc}] press enter to return to banger tui ")
        except Exception as exc:  # SuspendNotSupported, a missing tool, …
            msg = exc.message if isinstance(exc, BangerError) else str(exc)
            self.show_error(BangerError(f"cannot run `banger {' '.join(args)}`: {msg}"))
            return
        if rc not in (0, 130):
            self.set_message(f"[yellow]`banger {escape(' '.join(args))}` exited {rc}[/]")
        else:
            self.set_message(f"back from {vm.name}")
        self.refresh_now()

    def _open_view(self, view: str, vm: VM) -> None:
        if view == "info":
            self.push_screen(Details(f"VM {vm.name}", _vm_details(vm)))
            return
        self.run_worker(partial(self._load_view, view, vm), thread=True, exit_on_error=False)

    def _load_view(self, view: str, vm: VM) -> None:
        c = self.client
        assert c is not None
        try:
            if view == "logs":
                path = Path(c.console_log(vm.name))
                self._ui(self.push_screen, Logs(vm.name, path))
            elif view == "ports":
                ports = c.vm_ports(vm.name).get("ports", [])
                self._ui(self.push_screen, Ports(vm.name, ports))
            elif view == "health":
                h = c.vm_health(vm.name)
                self._ui(self.push_screen, Details(f"Health of {vm.name}", _health_text(h)))
        except BangerError as exc:
            self._ui(self.show_error, exc)

    def open_create(self) -> None:
        c = self._require_client()
        if c is None:
            return

        targets: dict[str, str] = {}  # operation id -> the VM it creates

        def submit(req: CreateVM) -> str:
            op = c.create_vm(req)
            targets[op.id] = op.target
            self._ui(self.mine.__setitem__, op.id, f"{op.target} created")
            self._wake.set()
            return op.id

        def done(op_id: str | None) -> None:
            # A create that failed at once may be reported before the form is gone:
            # its error stays on screen rather than "creating…".
            if op_id and op_id in self.mine:
                self.set_message(f"creating {targets[op_id]}… (progress below; c cancels)")

        self.push_screen(
            CreateForm(submit, [i.name for i in self.images], self.config_values), done
        )

    # -- marks and filter --------------------------------------------------------------------

    def toggle_mark(self) -> None:
        table = self._vm_table()
        key = table.current_key()
        if key is None:
            return
        self.marked ^= {key}
        self._render_vms()
        self._update_topbar()
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def mark_all(self) -> None:
        f = self.filter_text
        self.marked = {k for k, v in self.vms.items() if not f or f in v.name}
        self._render_vms()
        self._update_topbar()

    def clear_marks(self) -> None:
        if self.filter_text:
            self._set_filter("")
        self.marked.clear()
        self._render_vms()
        self._update_topbar()

    def open_filter(self) -> None:
        box = self.w_filter
        box.add_class("shown")
        box.value = self.filter_text
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self._set_filter(event.value.strip())

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        box = self.w_filter
        if not box.value.strip():
            box.remove_class("shown")
        self._vm_table().focus()

    def _set_filter(self, text: str) -> None:
        self.filter_text = text
        if not text:
            self.w_filter.remove_class("shown")
        self._vm_table().reset()
        self._render_vms()
        self._update_topbar()

    def on_key(self, event: Any) -> None:
        box = self.w_filter
        if event.key == "escape" and box.has_focus:
            box.value = ""
            self._set_filter("")
            self._vm_table().focus()
            event.stop()

    # -- operations --------------------------------------------------------------------------

    def action_cancel_op(self) -> None:
        ops_table = self.w_ops
        if ops_table.has_focus:
            self.cancel_operation(ops_table.current_key())
            return
        running = [v.op for v in self.ops.values() if v.op.state == "running"]
        vm = self.highlighted_vm()
        on_vm = [op for op in running if vm is not None and op.target == vm.name]
        if on_vm:
            self.cancel_operation(on_vm[-1].id)
        elif len(running) == 1:
            self.cancel_operation(running[0].id)
        elif running:
            self.set_message("several operations run: press o, pick one, then c")

    def cancel_operation(self, op_id: str | None) -> None:
        view = self.ops.get(op_id or "")
        if view is None or view.op.state != "running":
            self.set_message("that operation is not running")
            return
        c = self._require_client()
        if c is None:
            return
        label = f"{view.op.kind} {view.op.target}"
        self.mine.setdefault(view.op.id, label)

        def cancel() -> None:
            try:
                c.cancel(view.op.id)
            except BangerError as exc:
                self._ui(self.show_error, exc)
                return
            self._ui(self.set_message, f"cancelling {escape(label)}…")
            self._wake.set()

        self.run_worker(cancel, thread=True, exit_on_error=False)

    def action_focus_ops(self) -> None:
        table = self.w_ops
        if table.row_count:
            table.focus()
        else:
            self.set_message("no operations running")

    # -- images and kernels ---------------------------------------------------------------

    def pull_artifact(self, kind: str, selected: str | None) -> None:
        c = self._require_client()
        if c is None:
            return
        default = selected or ("debian-bookworm" if kind == "image" else "debian-6.1")

        def done(name: str | None) -> None:
            if not name:
                return

            def pull() -> None:
                try:
                    op = c.pull_image(name) if kind == "image" else c.pull_kernel(name)
                except BangerError as exc:
                    self._ui(self.show_error, exc)
                    return
                self._ui(self.mine.__setitem__, op.id, f"{kind} {name} pulled")
                self._wake.set()

            self.run_worker(pull, thread=True, exit_on_error=False)

        self.push_screen(Prompt(f"Pull which {kind}?", default), done)

    def show_artifact(self, kind: str, name: str | None) -> None:
        c = self._require_client()
        if c is None or name is None:
            return

        def load() -> None:
            try:
                item: Image | Kernel = c.image(name) if kind == "image" else c.kernel(name)
            except BangerError as exc:
                self._ui(self.show_error, exc)
                return
            lines = []
            data = item.model_dump(exclude={"info"})
            if isinstance(item, Image):
                data |= {k: v for k, v in item.info.items() if not isinstance(v, dict | list)}
            for key, val in data.items():
                lines.append(f"[b]{key:<14}[/] {escape(str(val))}")
            self._ui(self.push_screen, Details(f"{kind} {name}", "\n".join(lines)))

        self.run_worker(load, thread=True, exit_on_error=False)

    def remove_artifact(self, kind: str, name: str | None) -> None:
        c = self._require_client()
        if c is None or name is None:
            return
        users = [
            v.name for v in self.vms.values() if (v.image if kind == "image" else v.kernel) == name
        ]
        body = f"Remove {kind} {name}?"
        if users:
            body += f"\n[b]Used by {', '.join(users)}: they will not start without it.[/]"

        def done(yes: bool | None) -> None:
            if not yes:
                return

            def rm() -> None:
                try:
                    if kind == "image":
                        c.remove_image(name, force=bool(users))
                    else:
                        c.remove_kernel(name, force=bool(users))
                except BangerError as exc:
                    self._ui(self.show_error, exc)
                    return
                self._ui(self.set_message, f"[green]✓[/] removed {kind} {escape(name)}")
                self._artifacts_due = 0.0
                self._wake.set()

            self.run_worker(rm, thread=True, exit_on_error=False)

        self.push_screen(Confirm(f"Remove {kind}", body, yes="Remove"), done)

    # -- doctor ----------------------------------------------------------------------------

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane.id
        if pane == "doctor" and not getattr(self, "_doctor_ran", False):
            self._doctor_ran = True
            self.run_doctor()
        focus = {
            "vms": "#vm-table",
            "images": "#image-table",
            "kernels": "#kernel-table",
            "doctor": "#doctor-view",
        }.get(pane or "")
        if focus:
            self.query_one(focus).focus()

    def run_doctor(self) -> None:
        c = self._require_client()
        if c is None:
            return
        self.w_doctor.update("[dim]running the checks…[/]")

        def go() -> None:
            try:
                report = c.doctor()
            except BangerError as exc:
                self._ui(self.show_error, exc)
                return
            self._ui(self.w_doctor.update, _doctor_view(report))

        self.run_worker(go, thread=True, exit_on_error=False)

    # -- app-level actions -------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        if self.screen is self.w_vms.screen:
            self.w_tabs.active = tab

    def action_keys(self) -> None:
        if self.screen.query("KeyPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def action_start_daemon(self) -> None:
        def start() -> None:
            try:
                self.client = self._connect(autostart=True)
            except BangerError as exc:
                self._ui(self.show_error, exc)
                return
            self._wake.set()

        self.set_message("starting the daemon…")
        self.run_worker(start, thread=True, exit_on_error=False)


# -- text for the detail views ---------------------------------------------------------------


def _vm_details(vm: VM) -> str:
    lines = []
    for key, val in vm.model_dump(exclude={"timings"}).items():
        if key in ("created_at", "started_at") and isinstance(val, float):
            val = format_time(val)
        elif key.endswith("_bytes") and isinstance(val, int):
            val = format_size(val)
        elif key == "memory_mib" and isinstance(val, int):
            key, val = "memory", format_size(val * 1024**2)
        lines.append(f"[b]{key:<11}[/] {escape(str(val))}")
    if vm.timings:
        lines.append(
            "[b]timings    [/] " + "  ".join(f"{k}={s:.2f}s" for k, s in vm.timings.items())
        )
    lines.append(f"[b]{'dns':<11}[/] {vm.name}.vm")
    return "\n".join(lines)


def _health_text(h: dict[str, Any]) -> str:
    name = h.get("name", "")
    if not h.get("healthy"):
        detail = escape(str(h.get("detail") or h.get("agent")))
        text = f"[{health_color(h)}]✗[/] {escape(str(name))}: agent: {detail}"
        if h.get("hint"):
            text += f"\n[dim]hint:[/] {escape(str(h['hint']))}"
        return text
    text = f"[green]✓[/] agent ok ({h.get('latency_ms', '?')} ms, {h.get('transport')})\n"
    return text + "\n".join(f"  [b]{k:<11}[/]{escape(v)}" for k, v in health_rows(h))


def _doctor_view(report: DoctorReport) -> Any:
    """The checks grouped (worst group first), as a grid whose long details and fixes
    wrap under their own column instead of back to the margin."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.table import Table as Grid

    mark = {"ok": "[green]OK[/]", "warn": "[yellow]WARN[/]", "fail": "[red]FAIL[/]"}
    groups: dict[str, list[Any]] = {}
    for c in report.checks:
        groups.setdefault(c.group, []).append(c)
    n_fail = sum(c.status == "fail" for c in report.checks)
    n_warn = sum(c.status == "warn" for c in report.checks)
    head = (
        f"[red b]{n_fail} required check(s) failing[/]"
        if n_fail
        else "[green b]ready[/]" + (f" ({n_warn} warning(s))" if n_warn else "")
    )
    parts: list[Any] = [Text.from_markup(head + "\n")]
    order = {"fail": 0, "warn": 1, "ok": 2}
    for group, checks in sorted(groups.items(), key=lambda kv: min(order[c.status] for c in kv[1])):
        worst = min((c.status for c in checks), key=order.__getitem__)
        parts.append(Text.from_markup(f"[b]{escape(group)}[/] {mark[worst]}"))
        grid = Grid.grid(padding=(0, 1))
        grid.add_column(width=5, no_wrap=True)
        grid.add_column(ratio=1)
        for c in sorted(checks, key=lambda c: order[c.status]):
            grid.add_row(mark[c.status], f"{escape(c.name)}: {escape(c.detail)}")
            if c.fix and c.status != "ok":
                grid.add_row("", f"[dim]fix:[/] {escape(c.fix)}")
        parts += [Padding(grid, (0, 0, 0, 2)), Text("")]
    parts.append(Text.from_markup("[dim]g: run the checks again[/]"))
    return Group(*parts)


def run(paths: Paths | None = None, interval: float = 0.8) -> None:
    BangerApp(paths, interval=interval).run()
