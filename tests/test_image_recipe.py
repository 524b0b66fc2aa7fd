"""The debian-bookworm recipe as data, and the guest scripts it ships, run on the host."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from banger.artifacts.images.catalog import catalog
from banger.artifacts.images.recipe import RECIPES_DIR, load_recipe
from banger.errors import BangerError, NotFound
from banger.system import find_tool, run

RECIPE = load_recipe("debian-bookworm")
FILES = RECIPES_DIR / "debian-bookworm" / "files"


def installed(dest: str) -> str:
    entry = next(f for f in RECIPE.files if f.dest == dest)
    return RECIPE.source(entry).read_text()


def test_every_catalog_image_has_a_matching_recipe() -> None:
    for spec in catalog().values():
        recipe = load_recipe(spec.recipe)
        assert recipe.suite == spec.suite


def test_packages() -> None:
    wanted = {
        "systemd",
        "systemd-sysv",
        "openssh-server",
        "iproute2",
        "python3",
        "sudo",
        "curl",
        "ca-certificates",
        "git",
        "tmux",
        "less",
        "udev",
    }
    assert wanted <= set(RECIPE.packages)
    assert "ifupdown" not in RECIPE.packages
    assert len(set(RECIPE.packages)) == len(RECIPE.packages)


def test_every_shipped_file_is_installed_somewhere() -> None:
    used = {f.src for f in RECIPE.files} | {RECIPE.agent.unit}  # install_guest_agent's
    used |= {unit for tool in RECIPE.tools for unit in tool.enable}  # install_tools'

    assert used == {p.name for p in FILES.iterdir()}
    assert len({f.dest for f in RECIPE.files}) == len(RECIPE.files)


def test_executables_are_mode_0755_and_parse() -> None:
    for f in RECIPE.files:
        text = RECIPE.source(f).read_text()
        if text.startswith("#!"):
            assert f.mode == "0755", f.dest
            run(["bash", "-n", str(RECIPE.source(f))])


def test_enabled_units_are_shipped_with_an_install_section() -> None:
    for unit in RECIPE.units.enable:
        text = installed(f"/etc/systemd/system/{unit}")
        assert "[Install]" in text and "WantedBy=" in text
    hostkeys = installed("/etc/systemd/system/banger-hostkeys.service")
    assert hostkeys.count("Before=ssh.service")
    # An empty key (a VM killed during its first boot) is regenerated, not kept.
    assert "ConditionFileNotEmpty=!/etc/ssh/ssh_host_ed25519_key" in hostkeys
    assert "ExecStartPre=/bin/rm -f /etc/ssh/ssh_host_ed25519_key " in hostkeys
    # ...and a new key is on disk before sshd offers it, so a killed VM keeps it.
    assert "ExecStartPost=/bin/sync -f /etc/ssh/ssh_host_ed25519_key" in hostkeys
    net = installed("/etc/systemd/system/banger-net.service")
    assert "Before=network.target network-online.target ssh.service" in net
    assert "ExecStart=/usr/local/sbin/banger-net" in net
    assert RECIPE.units.default_target == "multi-user.target"
    for slow in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "man-db.timer"):
        assert slow in RECIPE.units.mask


@pytest.mark.parametrize("cmdline", ["quiet banger.golden=1 ip=x", "banger.golden=0 golden=1"])
def test_golden_boot_holds_back_what_gives_an_identity(tmp_path: Path, cmdline: str) -> None:
    # The generator marks a golden boot; the units that would take an identity
    # (network, /root, services living there) are held back by it. sshd runs, with
    # a throwaway key and no network: /identity replaces the key before the network.
    hold = "ConditionPathExists=!/run/banger/golden"
    for dest in (
        "/etc/systemd/system/banger-net.service",
        "/etc/systemd/system/root.mount.d/banger-golden.conf",
        "/etc/systemd/system/opencode-server.service.d/banger-golden.conf",
    ):
        assert hold in installed(dest).splitlines(), dest
    for dest in (
        "/etc/systemd/system/banger-hostkeys.service",
        "/etc/systemd/system/ssh.service.d/banger.conf",
    ):
        assert hold not in installed(dest).splitlines(), dest
    gen = installed("/etc/systemd/system-generators/banger-golden")
    fake = tmp_path / "cmdline"
    fake.write_text(cmdline + "\n")
    script = tmp_path / "gen"
    script.write_text(gen.replace("/proc/cmdline", str(fake)).replace("/run/", f"{tmp_path}/"))
    run(["sh", str(script)])
    golden = tmp_path / "banger" / "golden"
    assert golden.exists() == ("banger.golden=1" in cmdline.split())
    # Once /identity ran, a daemon-reload (generators run again) leaves it alone.
    golden.unlink(missing_ok=True)
    (tmp_path / "banger").mkdir(exist_ok=True)
    (tmp_path / "banger" / "identity").touch()
    run(["sh", str(script)])
    assert not golden.exists()


def test_sshd_is_key_only() -> None:
    conf = installed("/etc/ssh/sshd_config.d/banger.conf").splitlines()
    for line in (
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UseDNS no",
    ):
        assert line in conf
    assert "/etc/ssh/ssh_host_*" in RECIPE.cleanup.remove
    assert "/etc/machine-id" in RECIPE.cleanup.truncate


def test_fstab() -> None:
    rows = [
        line.split()
        for line in installed("/etc/fstab").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rows[0][:3] == ["/dev/vda", "/", "ext4"]
    assert rows[1][:3] == ["/dev/vdb", "/root", "ext4"]
    assert "nofail" in rows[1][3].split(",")


def test_agent_is_enabled_with_its_unit() -> None:
    assert RECIPE.agent.enabled is True
    assert RECIPE.agent.path == "/usr/local/bin/banger-agent"
    assert RECIPE.agent.unit == "banger-agent.service"
    unit = (FILES / RECIPE.agent.unit).read_text()
    assert "ExecStart=/usr/bin/python3 -I /usr/local/bin/banger-agent" in unit
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit


def test_invalid_recipes_are_refused(tmp_path: Path) -> None:
    def write(name: str, body: str) -> None:
        d = tmp_path / name
        (d / "files").mkdir(parents=True)
        (d / "recipe.toml").write_text(body)

    base = 'name = "x"\nsuite = "bookworm"\npackages = ["bash"]\n'
    write("mode", base + '[[files]]\nsrc = "a"\ndest = "/a"\nmode = "755"\n')
    write("missing", base + '[[files]]\nsrc = "nope"\ndest = "/a"\n')
    write("relative", base + '[[files]]\nsrc = "a"\ndest = "etc/a"\n')
    write("unknown", base + "colour = 1\n")
    write("unit", base + '[units]\nenable = ["rm -rf"]\n')
    for name in ("mode", "missing", "relative", "unknown", "unit"):
        (tmp_path / name / "files" / "a").write_text("a")
        with pytest.raises(BangerError):
            load_recipe(name, tmp_path)
    with pytest.raises(NotFound):
        load_recipe("../etc", tmp_path)


# --- banger-net, run on the host in dry-run mode ---------------------------------


def banger_net(tmp_path: Path, cmdline: str, ifaces: tuple[str, ...] = ("eth0",)) -> list[str]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for name in ifaces:
        (root / "sys/class/net" / name).mkdir(parents=True, exist_ok=True)
        (root / "sys/class/net" / name / "type").write_text("1\n")
    (root / "sys/class/net/lo").mkdir(parents=True, exist_ok=True)
    (root / "sys/class/net/lo/type").write_text("772\n")
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    env = {
        **os.environ,
        "BANGER_NET_CMDLINE": str(tmp_path / "cmdline"),
        "BANGER_NET_ROOT": str(root),
        "BANGER_NET_DRYRUN": "1",
    }
    res = run(["bash", str(FILES / "banger-net")], env=env)
    return res.out.splitlines()


def test_banger_net_static(tmp_path: Path) -> None:
    cmds = banger_net(
        tmp_path,
        "console=ttyS0 root=/dev/vda ip=172.30.0.5::172.30.0.1:255.255.255.0:box:eth0:off",
    )
    assert cmds == [
        "ip link set dev eth0 up",
        "ip addr replace 172.30.0.5/24 dev eth0",
        "ip route replace default via 172.30.0.1 dev eth0 onlink",
        "hostname box",
    ]
    assert not (tmp_path / "root/etc/resolv.conf").exists()


def test_banger_net_dns_prefix_and_systemd_hostname(tmp_path: Path) -> None:
    cmds = banger_net(
        tmp_path,
        "systemd.hostname=vm1 ip=10.0.2.15::10.0.2.2:16:vm1:eth0:off:10.0.2.3:1.1.1.1",
    )
    assert "ip addr replace 10.0.2.15/16 dev eth0" in cmds
    assert not any(c.startswith("hostname") for c in cmds)  # systemd already set it
    resolv = (tmp_path / "root/etc/resolv.conf").read_text().splitlines()
    assert [x for x in resolv if not x.startswith("#")] == [
        "nameserver 10.0.2.3",
        "nameserver 1.1.1.1",
    ]


def test_banger_net_gives_the_guest_the_daemon_dns_and_search_domain(tmp_path: Path) -> None:
    # What DnsCapability puts on the command line: the bridge address and the zone.
    banger_net(
        tmp_path,
        "ip=172.30.0.7::172.30.0.1:255.255.255.0:a:eth0:off:172.30.0.1 banger.dns_search=vm",
    )
    resolv = (tmp_path / "root/etc/resolv.conf").read_text().splitlines()
    assert [x for x in resolv if not x.startswith("#")] == ["nameserver 172.30.0.1", "search vm"]
    assert not list((tmp_path / "root/etc").glob(".resolv*"))  # replaced atomically


def test_banger_resolv_alone_is_reusable(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    env = {**os.environ, "BANGER_NET_ROOT": str(tmp_path)}
    run(["sh", str(FILES / "banger-resolv"), "-s", "vm", "172.30.0.1"], env=env)
    lines = (tmp_path / "etc/resolv.conf").read_text().splitlines()
    assert lines[-2:] == ["nameserver 172.30.0.1", "search vm"]
    bad = run(["sh", str(FILES / "banger-resolv")], env=env, check=False)
    assert bad.returncode == 2 and "usage" in bad.stderr.decode()


def test_banger_net_falls_back_to_the_first_ethernet(tmp_path: Path) -> None:
    cmds = banger_net(tmp_path, "ip=10.1.0.2::10.1.0.1:255.255.0.0::eth0:off", ("ens3",))
    assert cmds[:2] == ["ip link set dev ens3 up", "ip addr replace 10.1.0.2/16 dev ens3"]


@pytest.mark.parametrize("cmdline", ["console=ttyS0", "ip=dhcp", "ip=::::::dhcp"])
def test_banger_net_leaves_non_static_alone(tmp_path: Path, cmdline: str) -> None:
    assert banger_net(tmp_path, cmdline) == []


# --- tmux session save/restore, run against a private tmux server --------------


@pytest.mark.skipif(find_tool("tmux") is None, reason="tmux is not installed")
def test_tmux_sessions_survive_a_server_restart(tmp_path: Path) -> None:
    home, sock = tmp_path / "home", tmp_path / "sock"
    home.mkdir()
    sock.mkdir()
    (tmp_path / "a").mkdir()
    # The guest runs /usr/local/lib/banger/tmux-sessions; here, the recipe's copy.
    conf = (FILES / "tmux.conf").read_text()
    conf = conf.replace("/usr/local/lib/banger/tmux-sessions", f"bash {FILES / 'tmux-sessions'}")
    (home / ".tmux.conf").write_text(conf)
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    env.update(HOME=str(home), TMUX_TMPDIR=str(sock), XDG_DATA_HOME=str(home / ".local/share"))

    def tmux(*args: str) -> str:
        return run(["tmux", *args], env=env).out

    state = home / ".local/share/tmux/banger-sessions.tsv"
    try:
        tmux("new-session", "-d", "-s", "work", "-c", str(tmp_path / "a"))
        tmux("new-window", "-d", "-t", "work", "-n", "logs", "-c", "/etc")
        tmux("split-window", "-d", "-t", "work:logs", "-c", "/")
        tmux("new-session", "-d", "-s", "other", "-c", "/")
        # First save happens when the startup restore finishes; then on each change.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if state.exists() and state.read_text().count("\n") == 4:
                break
            time.sleep(0.2)
        assert state.read_text().count("\n") == 4, state.read_text() if state.exists() else ""
        tmux("kill-server")
        for _ in range(50):  # the old server may still be on its way out
            res = run(["tmux", "new-session", "-d", "-s", "fresh"], env=env, check=False)
            if res.returncode == 0:
                break
            time.sleep(0.1)
        fmt = "#{session_name} #{window_index} #{pane_current_path}"
        want = {f"work 1 {tmp_path / 'a'}", "work 2 /etc", "work 2 /", "other 1 /"}
        deadline = time.monotonic() + 15
        panes: set[str] = set()
        while time.monotonic() < deadline:
            panes = set(tmux("list-panes", "-a", "-F", fmt).splitlines())
            if want <= panes:
                break
            time.sleep(0.2)
        assert want <= panes
        assert "logs" in tmux("list-windows", "-t", "=work", "-F", "#{window_name}").split()
    finally:
        run(["tmux", "kill-server"], env=env, check=False)
