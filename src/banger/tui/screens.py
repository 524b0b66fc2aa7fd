"""Dialogs and detail views the TUI opens over its main screen."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Log, Select, Static

from banger.api.models import CreateVM
from banger.engine_names import ENGINE_CHOICES
from banger.errors import BangerError

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*(\x07|\x1b\\)|[@-Z\\-_])")


def error_text(exc: BangerError) -> str:
    """The CLI's two lines: `error: …` and `hint: …`."""
    text = f"[b red]error:[/] {escape(exc.message)}"
    if exc.hint:
        text += f"\n[dim]hint:[/] {escape(exc.hint)}"
    return text


class Confirm(ModalScreen[bool]):
    """Yes/no, defaulting to no; `y`/`enter` on the button, `n`/`escape` cancel."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: str, yes: str = "Yes") -> None:
        super().__init__()
        self._title, self._body, self._yes = title, body, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="title")
            yield Static(self._body, classes="body")
            with Horizontal(classes="buttons"):
                yield Button(f"{self._yes} (y)", variant="error", id="yes", compact=True)
                yield Button("Cancel (n)", id="no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class Prompt(ModalScreen[str | None]):
    """One line of input."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(
        self, title: str, value: str = "", placeholder: str = "", *, allow_empty: bool = False
    ) -> None:
        super().__init__()
        self._title, self._value, self._placeholder = title, value, placeholder
        self._allow_empty = allow_empty

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="title")
            yield Input(self._value, placeholder=self._placeholder, id="prompt", compact=True)
            yield Static("[dim]enter: ok · escape: cancel[/]")

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(text if text or self._allow_empty else None)


class CreateForm(ModalScreen[str | None]):
    """The `vm create` options as a form. Submitting asks the daemon (in a worker); bad
    input comes back as the CLI's error + hint under the form, which stays open. The
    form closes with the create operation's id (`submit` returns it)."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "submit", "Create"),
    ]

    FIELDS = (
        ("name", "Name", "generated"),
        ("vcpus", "vCPUs", ""),
        ("memory", "Memory", ""),
        ("disk_size", "Root disk", ""),
        ("work_size", "/root disk", ""),
    )

    def __init__(
        self,
        submit: Callable[[CreateVM], str],
        images: list[str],
        defaults: dict[str, Any],
    ) -> None:
        super().__init__()
        self._submit_fn = submit
        self._images = images
        self._defaults = defaults

    def compose(self) -> ComposeResult:
        d = self._defaults
        placeholders = {
            "vcpus": str(d.get("default_vcpus", "")),
            "memory": str(d.get("default_memory", "")),
            "disk_size": str(d.get("default_disk_size", "")),
            "work_size": str(d.get("default_work_size", "")),
        }
        default_image = str(d.get("default_image") or "debian-bookworm")
        images = sorted(set(self._images) | {default_image})
        with VerticalScroll(classes="dialog form"):
            yield Label("Create a VM", classes="title")
            for key, label, placeholder in self.FIELDS:
                with Horizontal(classes="row"):
                    yield Label(label, classes="label")
                    yield Input(
                        placeholder=f"{placeholders[key]} (default)"
                        if placeholders.get(key)
                        else placeholder,
                        id=f"f-{key}",
                        type="integer" if key == "vcpus" else "text",
                        compact=True,
                    )
            with Horizontal(classes="row"):
                yield Label("Image", classes="label")
                yield Select(
                    [(i, i) for i in images],
                    value=default_image,
                    allow_blank=False,
                    id="f-image",
                    compact=True,
                )
            with Horizontal(classes="row"):
                yield Label("Engine", classes="label")
                yield Select(
                    [(e, e) for e in ENGINE_CHOICES],
                    value=str(d.get("engine") or "auto"),
                    allow_blank=False,
                    id="f-engine",
                    compact=True,
                )
            yield Checkbox("NAT (internet access)", id="f-nat", compact=True)
            yield Static("", id="form-error")
            with Horizontal(classes="buttons"):
                yield Button("Create (ctrl+s)", variant="primary", id="create", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#f-name", Input).focus()

    def request(self) -> CreateVM:
        values: dict[str, Any] = {}
        for key, _, _ in self.FIELDS:
            text = self.query_one(f"#f-{key}", Input).value.strip()
            if text:
                values[key] = int(text) if key == "vcpus" else text
        values["image"] = str(self.query_one("#f-image", Select).value)
        values["engine"] = str(self.query_one("#f-engine", Select).value)
        values["nat"] = self.query_one("#f-nat", Checkbox).value
        return CreateVM.model_validate(values)

    @on(Input.Submitted)
    def _enter(self) -> None:
        self.action_submit()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "create":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_submit(self) -> None:
        try:
            req = self.request()
        except ValueError as exc:
            self.show_error(BangerError(str(exc).splitlines()[0]))
            return
        self.query_one("#form-error", Static).update("[dim]asking the daemon…[/]")
        self._send(req)

    @work(thread=True, exclusive=True, group="create-form")
    def _send(self, req: CreateVM) -> None:
        try:
            op_id = self._submit_fn(req)
        except BangerError as exc:
            self.app.call_from_thread(self.show_error, exc)
            return
        self.app.call_from_thread(self.dismiss, op_id)

    def show_error(self, exc: BangerError) -> None:
        self.query_one("#form-error", Static).update(error_text(exc))


class Details(ModalScreen[None]):
    """A read-only view: key/value lines (details, health) or any rich text."""

    BINDINGS = [Binding("escape,q", "dismiss(None)", "Close")]

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self._title, self._body = title, body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(self._title, classes="title")
            with VerticalScroll(classes="scroll"):
                yield Static(self._body, id="details-body")
            yield Static("[dim]escape: close[/]")

    def on_mount(self) -> None:
        self.query_one(".scroll", VerticalScroll).focus()  # arrows and pgup/pgdn scroll

    def update(self, body: str) -> None:
        self.query_one("#details-body", Static).update(body)


class Ports(ModalScreen[None]):
    """Listening TCP ports in a guest, with http://NAME.vm:PORT links (enter opens)."""

    BINDINGS = [
        Binding("escape,q", "dismiss(None)", "Close"),
        Binding("o", "open", "Open link"),
    ]

    def __init__(self, name: str, ports: list[dict[str, Any]]) -> None:
        super().__init__()
        self._name, self._ports = name, ports
        self._links: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"Ports of {self._name}", classes="title")
            if not self._ports:
                yield Static(f"nothing listens on TCP in {self._name}")
            else:
                yield DataTable(id="ports", cursor_type="row")
            yield Static("[dim]enter/o: open link · escape: close[/]")

    def on_mount(self) -> None:
        if not self._ports:
            return
        table = self.query_one("#ports", DataTable)
        table.add_columns("port", "address", "process", "link")
        seen: set[int] = set()
        for i, p in enumerate(self._ports):
            port = int(p["port"])
            addr = str(p.get("address", ""))
            loopback = addr.startswith("127.") or addr == "::1"
            link = "" if loopback or port in seen else f"http://{self._name}.vm:{port}"
            seen.add(port)
            proc = str(p.get("process") or "-")
            if p.get("pid"):
                proc = f"{proc} ({p['pid']})"
            key = str(i)
            if link:
                self._links[key] = link
            table.add_row(str(port), addr, proc, link, key=key)
        table.focus()

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        table = self.query_one("#ports", DataTable)
        if table.row_count == 0:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        link = self._links.get(str(key))
        if link:
            self.app.open_url(link)
            self.app.notify(f"opening {link}")


class Logs(ModalScreen[None]):
    """A VM's serial console, followed like `banger vm logs -f`."""

    BINDINGS = [
        Binding("escape,q", "dismiss(None)", "Close"),
        Binding("f", "toggle_follow", "Follow on/off"),
        Binding("g", "top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
    ]

    def __init__(self, name: str, path: Path) -> None:
        super().__init__()
        self._name, self._path = name, path
        self._stop = threading.Event()
        self.follow = True

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full"):
            yield Label(f"Console of {self._name} — {self._path}", classes="title")
            yield Log(id="log", highlight=False, max_lines=20000)
            yield Static("[dim]f: follow on/off · g/G: top/bottom · escape: close[/]", id="lh")

    def on_mount(self) -> None:
        self.query_one("#log", Log).focus()
        self._tail()

    def on_unmount(self) -> None:
        self._stop.set()

    @work(thread=True, exclusive=True, group="logs")
    def _tail(self) -> None:
        waited = False
        while not self._stop.is_set() and not self._path.exists():
            if not waited:
                self.app.call_from_thread(self._write, "(no console output yet; waiting)\n")
                waited = True
            time.sleep(0.3)
        try:
            f = self._path.open("rb")
        except OSError as exc:
            self.app.call_from_thread(self._write, f"cannot read {self._path}: {exc}\n")
            return
        with f:
            pending = b""
            while not self._stop.is_set():
                chunk = f.read(65536)
                if not chunk:
                    time.sleep(0.2)
                    continue
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                if cut:
                    text = data[:cut].decode(errors="replace").replace("\r", "")
                    self.app.call_from_thread(self._write, ANSI.sub("", text))

    def _write(self, text: str) -> None:
        log = self.query_one("#log", Log)
        log.auto_scroll = self.follow
        log.write(text)

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.app.notify("following the console" if self.follow else "not following")
        if self.follow:
            self.query_one("#log", Log).scroll_end(animate=False)

    def action_top(self) -> None:
        self.follow = False
        self.query_one("#log", Log).scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.query_one("#log", Log).scroll_end(animate=False)
