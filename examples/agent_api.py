"""Drive a banger VM from Python: run commands, move files, no SSH involved.

    python examples/agent_api.py            # creates a VM, uses it, deletes it
    python examples/agent_api.py NAME       # uses an existing, running VM

Needs a banger daemon (started on demand) and the default image (pulled on demand).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import banger


def main(argv: list[str]) -> int:
    with banger.Client.connect() as c:
        own = not argv
        name = argv[0] if argv else c.create(image="debian-bookworm").name
        try:
            # A command: exit code, stdout and stderr apart.
            r = c.exec(name, ["uname", "-sr"])
            print(f"kernel: {r.output.strip()} (exit {r.exit_code})")

            # A shell snippet, input on stdin, a timeout.
            r = c.exec(name, "tr a-z A-Z", input="hello from the host\n", timeout=30)
            print(f"upper: {r.output.strip()}")

            # Files: write, read back, copy a directory in and out.
            c.write_file(name, "/root/example/greeting.txt", "hi\n")
            print(f"read back: {c.read_file(name, '/root/example/greeting.txt')!r}")
            with tempfile.TemporaryDirectory() as tmp:
                proj = Path(tmp) / "proj"
                proj.mkdir()
                (proj / "main.py").write_text("print('built in the VM')\n")
                c.exec(name, "rm -rf /root/example/proj", check=True)
                c.copy_to(name, proj, "/root/example/proj")
                r = c.exec(name, ["python3", "main.py"], workdir="/root/example/proj", check=True)
                print(f"ran: {r.output.strip()}")
                c.copy_from(name, "/root/example/proj", Path(tmp) / "back")
                print(f"copied back: {sorted(p.name for p in (Path(tmp) / 'back').iterdir())}")

            # Streaming: output arrives as the command produces it.
            with c.exec_stream(name, ["sh", "-c", "for i in 1 2 3; do echo tick $i; done"]) as s:
                for ev in s.events():
                    if ev.kind == "stdout":
                        sys.stdout.write(ev.data.decode())
                    elif ev.kind == "exit":
                        print(f"stream exit: {ev.info['code']}")
        finally:
            if own:
                c.delete(name, force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
