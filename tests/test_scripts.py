"""Cheap checks of the developer scripts: scripts/bench_create.py and scripts/verify.sh.

Nothing here boots a VM or needs root: `--help`, argument validation and the pure
helpers (statistics, table formatting, QEMU argv parity, report rendering).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench_create.py"
VERIFY = REPO / "scripts" / "verify.sh"


sys.path.insert(0, str(REPO / "scripts"))
import benchlib  # noqa: E402
import rawboot  # noqa: E402


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_create", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_create"] = mod  # dataclasses resolve annotations through it
    spec.loader.exec_module(mod)
    return mod


bc = _load()


# -- bench_create.py: command line ----------------------------------------------------


def test_help_runs_without_root_or_daemon() -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    for opt in ("--runs", "--concurrent", "--netns", "--no-netns", "--json", "--data-dir"):
        assert opt in res.stdout


def test_defaults() -> None:
    args = bc.parse_args([])
    assert args.runs == 3
    assert args.concurrent == 1
    assert args.netns is True
    assert args.only == "both"
    assert args.json is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "0"], "must be at least 1"),
        (["--runs", "two"], "expected a whole number"),
        (["--warmup", "-1"], "must not be negative"),
        (["--concurrent", "99"], "--concurrent must be at most 32"),
        (["--engine", "vmware"], "invalid choice"),
        (["--memory", "lots"], "--memory 'lots' is not a size"),
        (["--no-netns", "--data-dir", "/tmp"], "drop --no-netns"),
        (["--data-dir", "/does/not/exist"], "is not a directory"),
        (["--config", "/does/not/exist.toml"], "is not a file"),
        (["--check", "--only", "raw"], "--check compares both sides"),
        (["--ssh-timeout", "0"], "--ssh-timeout must be positive"),
    ],
)
def test_argument_errors_are_clear(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bc.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the message non-root users get")
def test_netns_without_root_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert bc.main(["--runs", "1"]) == 2
    assert "--no-netns" in capsys.readouterr().err


# -- bench_create.py: statistics and formatting ----------------------------------------


def test_percentile_interpolates() -> None:
    xs = [4.0, 1.0, 3.0, 2.0]
    assert benchlib.percentile(xs, 0) == 1.0
    assert benchlib.percentile(xs, 100) == 4.0
    assert benchlib.percentile(xs, 50) == 2.5
    assert benchlib.percentile(xs, 25) == pytest.approx(1.75)
    assert benchlib.percentile([7.0], 90) == 7.0


@pytest.mark.parametrize(("values", "p"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_rejects_bad_input(values: list[float], p: float) -> None:
    with pytest.raises(ValueError):
        benchlib.percentile(values, p)


def test_summarize() -> None:
    assert benchlib.summarize([3.0, 1.0, 2.0]) == {"n": 3, "p50": 2.0, "min": 1.0, "max": 3.0}
    assert benchlib.summarize([]) == {"n": 0}


def test_stage_medians_orders_known_stages_and_keeps_new_ones() -> None:
    runs = [
        {"total": 3.0, "ssh": 2.0, "boot": 0.5, "disks": 0.1, "network": 0.01, "image": 0.0},
        {"total": 5.0, "ssh": 4.0, "boot": 0.7, "disks": 0.3, "network": 0.03, "image": 0.0},
        {"total": 4.0, "ssh": 3.0, "boot": 0.6, "disks": 0.2, "network": 0.02, "agent": 0.5},
    ]
    med = bc.stage_medians(runs)
    assert list(med) == ["image", "disks", "network", "boot", "ssh", "total", "agent"]
    assert med["total"] == 4.0
    assert med["ssh"] == 3.0
    assert med["image"] == 0.0  # median of the two runs that have it
    assert med["agent"] == 0.5


def test_overhead() -> None:
    o = benchlib.overhead(11.0, 10.0)
    assert o.ratio == pytest.approx(1.1)
    assert o.seconds == pytest.approx(1.0)
    assert o.percent == pytest.approx(10.0)
    assert o.meets(1.10)
    assert not benchlib.overhead(12.0, 10.0).meets(1.10)
    with pytest.raises(ValueError):
        benchlib.overhead(1.0, 0.0)


def test_host_side_excludes_the_guest_boot() -> None:
    t = {"image": 0.01, "disks": 0.3, "network": 0.02, "boot": 0.1, "ssh": 9.0, "total": 9.5}
    assert bc.host_side(t) == pytest.approx(0.43)
    assert bc.host_side({}) == 0


def test_format_table_aligns_columns() -> None:
    text = benchlib.format_table(["stage", "p50 s"], [("disks", "0.120"), ("total", "12.345")])
    lines = text.splitlines()
    assert lines[0] == "stage   p50 s"
    assert lines[1] == "-----  ------"
    assert lines[2] == "disks   0.120"
    assert lines[3] == "total  12.345"
    with pytest.raises(ValueError):
        benchlib.format_table(["a", "b"], [("only one",)])


def test_fmt_s() -> None:
    assert benchlib.fmt_s(1.23456) == "1.235"
    assert benchlib.fmt_s(None) == "-"


def test_raw_address_and_accel() -> None:
    assert rawboot.raw_address(0) == "172.31.0.2"
    assert rawboot.raw_address(9) == "172.31.0.11"
    with pytest.raises(ValueError):
        rawboot.raw_address(250)
    assert rawboot.accel_of(["qemu", "-accel", "tcg", "-cpu", "max"]) == "tcg"
    assert rawboot.accel_of(["qemu", "-enable-kvm"]) == "kvm"
    assert rawboot.accel_of(["qemu"]) is None


# -- bench_create.py: QEMU argv parity -------------------------------------------------


def _argv(
    tmp_path: Path, name: str, tap: str, ip: str, vcpus: int = 2, kernel: str = "vmlinux"
) -> list[str]:
    """QEMU argv from banger's own builders; the kernel is shared, the disks per VM."""
    from banger.engines.guest_config import build_guest_config
    from banger.engines.qemu import build_argv

    d = tmp_path / name
    (d / "run").mkdir(parents=True)
    for f in (d / "rootfs.ext4", d / "work.ext4", tmp_path / kernel, tmp_path / "initrd"):
        f.touch()
    cfg = build_guest_config(
        vm_id=f"id-{name}",
        name=name,
        kernel=tmp_path / kernel,
        initrd=tmp_path / "initrd",
        rootfs=d / "rootfs.ext4",
        work_disk=d / "work.ext4",
        vcpus=vcpus,
        memory_mib=1024,
        run_dir=d / "run",
        ip=ip,
        gateway=ip.rsplit(".", 1)[0] + ".1",
        tap=tap,
    )
    return build_argv(cfg, qemu_bin="/usr/bin/qemu-system-x86_64", accel="tcg", vhost_vsock=False)


def test_argv_shape_masks_only_per_vm_values(tmp_path: Path) -> None:
    a = _argv(tmp_path, "bench-1", "tap-pool-0", "172.30.0.2")
    b = _argv(tmp_path, "raw-0", "bgrawt0", "172.31.0.2")
    assert a != b
    assert rawboot.argv_shape(a) == rawboot.argv_shape(b)
    assert rawboot.argv_differences(a, b) == []
    shape = " ".join(rawboot.argv_shape(a))
    for masked in ("<path>", "ifname=<tap>", "mac=<mac>", "guest=<name>", "ip=<vm>"):
        assert masked in shape


def test_argv_differences_reports_real_differences(tmp_path: Path) -> None:
    a = _argv(tmp_path, "a", "tap-pool-0", "172.30.0.2", vcpus=2)
    b = _argv(tmp_path, "b", "bgrawt0", "172.31.0.2", vcpus=4)
    diffs = rawboot.argv_differences(a, b)
    assert "banger only: 2" in diffs
    assert "raw only: 4" in diffs
    other_kernel = _argv(tmp_path, "c", "bgrawt1", "172.31.0.3", kernel="vmlinux-2")
    assert f"raw only: {tmp_path}/vmlinux-2" in rawboot.argv_differences(a, other_kernel)
    c = ["/opt/qemu", *a[1:]]
    assert rawboot.argv_differences(a, c) == [f"binary: banger {a[0]} vs raw /opt/qemu"]


def test_cmdline_extras_keeps_capability_fragments() -> None:
    base = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw rootfstype=ext4"
    cmd = (
        f"{base} ip=172.30.0.5::172.30.0.1:255.255.255.0:vm:eth0:off "
        "systemd.hostname=vm banger.dns=172.30.0.1 banger.peer=172.30.0.5 tsc_early_khz=2000000"
    )
    extras = rawboot.cmdline_extras(cmd, base, "172.30.0.5", "172.31.0.2")
    assert extras == ["banger.dns=172.30.0.1", "banger.peer=172.31.0.2"]


# -- bench_create.py: report ------------------------------------------------------------


def _spec(tmp_path: Path) -> object:
    from banger.artifacts.diskpool import DiskSpec

    disks = DiskSpec(tmp_path / "rootfs.ext4", tmp_path / "work-seed.ext4", 4 << 30, 2 << 30, "k")
    args = bc.parse_args([])
    return bc.Spec("debian-bookworm", "debian-6.1", tmp_path / "vmlinux", None, disks,
                   tmp_path / "id", 2, 1024, args)  # fmt: skip


def _rounds(banger_walls: list[float], raw_walls: list[float]) -> list[Any]:
    rounds = []
    for i, (bw, rw) in enumerate(zip(banger_walls, raw_walls, strict=True)):
        timings = {"image": 0.0, "disks": 0.1, "network": 0.01, "boot": 0.05, "ssh": bw - 0.2}
        timings["total"] = bw - 0.01
        banger = bc.Sample(bw, "tcg", f"b{i}", timings, "qemu", "172.30.0.2")
        samples = {"banger": [banger], "raw": [bc.Sample(rw, "tcg")]}
        rounds.append(bc.Round(samples, {"banger": bw, "raw": rw}))
    return rounds


def _args(**kw: object) -> argparse.Namespace:
    args: argparse.Namespace = bc.parse_args([f"--{k}={v}" for k, v in kw.items()])
    return args


def test_report_and_render_meet_target(tmp_path: Path) -> None:
    report = bc.build_report(_args(), _spec(tmp_path), _rounds([10.5, 10.4, 10.9], [10.0] * 3), [])
    assert report["accel"] == "tcg"
    assert report["banger"]["wall"]["p50"] == 10.5
    assert report["raw"]["wall"]["p50"] == 10.0
    assert report["overhead"]["wall"]["ratio"] == pytest.approx(1.05)
    assert report["target"]["met"] is True
    text = bc.render(report)
    assert "accel TCG" in text
    assert "banger wall (client) / raw = 1.050x" in text
    assert "+0.500 s (+5.0 % of raw)" in text
    assert ": met (1.050x)" in text
    assert "argv parity: identical" in text
    # host-side stages: image 0 + disks 0.1 + network 0.01 + boot 0.05 = 0.16 s of 10 s raw
    assert report["overhead"]["host_side"]["seconds"] == pytest.approx(0.16)
    assert "p50 = 0.160 s (1.6 % of raw)" in text
    assert report["overhead"]["paired_diff"]["p50"] == pytest.approx(0.5)
    assert "varies" not in text  # the raw runs were all alike


def test_report_poller_slack(tmp_path: Path) -> None:
    rounds = _rounds([10.0, 11.0], [9.0, 9.5])
    rounds[0].samples["raw"][0].banger_poll = 9.4
    rounds[1].samples["raw"][0].banger_poll = 10.1
    report = bc.build_report(_args(), _spec(tmp_path), rounds, [])
    assert report["raw"]["poller_slack"]["p50"] == pytest.approx(0.5)
    assert "poller on the raw guests got in +0.500 s after the tight poll" in bc.render(report)


def test_report_warns_about_noisy_raw_boots(tmp_path: Path) -> None:
    report = bc.build_report(_args(), _spec(tmp_path), _rounds([10.0, 16.0], [8.0, 16.0]), [])
    assert report["overhead"]["raw_spread"] == pytest.approx(2.0)
    assert "varies 2.0x between runs" in bc.render(report)


def test_report_flags_missed_target_and_parity(tmp_path: Path) -> None:
    report = bc.build_report(
        _args(), _spec(tmp_path), _rounds([13.0], [10.0]), ["banger only: -device foo"]
    )
    assert report["target"]["met"] is False
    text = bc.render(report)
    assert "NOT met" in text
    assert "banger only: -device foo" in text


def test_report_concurrent_uses_round_wall(tmp_path: Path) -> None:
    report = bc.build_report(
        _args(concurrent=2), _spec(tmp_path), _rounds([12.0, 14.0], [10.0, 10.0]), None
    )
    assert report["target"]["limit"] == bc.TARGET_CONCURRENT_RATIO
    assert report["target"]["ratio"] == pytest.approx(1.3)
    assert report["target"]["met"] is True
    assert "2 at once" in bc.render(report)


def test_report_one_side_only(tmp_path: Path) -> None:
    rounds = _rounds([10.0], [9.0])
    for r in rounds:
        del r.samples["banger"], r.walls["banger"]
    report = bc.build_report(_args(only="raw"), _spec(tmp_path), rounds, None)
    assert report["banger"] is None and report["overhead"] is None
    assert "raw boot -> SSH" in bc.render(report)


# -- verify.sh ------------------------------------------------------------------------------


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(VERIFY), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_verify_syntax() -> None:
    assert subprocess.run(["bash", "-n", str(VERIFY)], check=False).returncode == 0


def test_verify_help() -> None:
    res = _verify("--help")
    assert res.returncode == 0
    assert "--nat" in res.stdout and "--keep" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--engine", "vmware"], "--engine must be auto, qemu or firecracker"),
        (["--data-dir"], "--data-dir needs a directory"),
        (["--data-dir", "/does/not/exist"], "is not a directory"),
    ],
)
def test_verify_argument_errors(args: list[str], message: str) -> None:
    res = _verify(*args)
    assert res.returncode == 2
    assert message in res.stderr
