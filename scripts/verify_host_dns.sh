#!/usr/bin/env bash
# Show `banger dns setup|status|teardown` working against a real systemd-resolved, on a
# host that does not run one, without touching the host's resolver: everything runs
# in a network namespace plus a private mount namespace with its own D-Bus system
# bus, its own systemd-resolved (unpacked from the Debian package matching the
# installed systemd, never installed), its own /etc/resolv.conf (resolved's stub),
# and a private banger daemon. It boots one VM.
#
#   bash scripts/verify_host_dns.sh            # exit 0 when every step worked
#
# Steps: create VM a; `dns status` says not configured; `dns setup`; the host side
# resolves a.vm and `ssh root@a.vm` works; resolved forgets the link (as on a
# restart) and a daemon restart re-applies it; `dns teardown` undoes it; cleanup.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${BANGER_VERIFY_DIR:-/tmp/banger-verify-dns}
ns=bgt-vdns-$$

if [ "${1:-}" != "--inner" ]; then
    [ "$(id -u)" = 0 ] || { echo "run as root (namespaces)" >&2; exit 1; }
    mkdir -p "$work"
    if [ ! -x "$work/root/lib/systemd/systemd-resolved" ]; then
        ver=$(dpkg-query -W -f '${Version}' systemd)
        (cd "$work" && apt-get download "systemd-resolved=$ver" && dpkg -x systemd-resolved_*.deb root)
    fi
    ip netns add "$ns"
    trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
    ip netns exec "$ns" unshare -m --propagation private bash "$0" --inner
    exit $?
fi

# --- inside the namespaces --------------------------------------------------------
R=$work/root
W=$(mktemp -d "$work/run.XXXX")
py="$here/.venv/bin/python"
export BANGER_HOME=$W/h BANGER_DATA_DIR=${BANGER_TEST_CACHE:-$HOME/.cache/banger-test}/data
export PATH="$R/usr/bin:$PATH"
banger() { "$py" -m banger.cli "$@"; }
step() { echo; echo "== $*"; }
pids=()
cleanup() {
    banger vm delete --force a >/dev/null 2>&1 || true
    banger daemon stop >/dev/null 2>&1 || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

ip link set lo up
mount -t tmpfs tmpfs /run/systemd  # hides the host's /run/systemd in this mount ns only
mkdir -p /run/systemd/resolve "$W/dbus"
mount --bind "$W/dbus" /run/dbus
cp /etc/passwd /etc/group "$W/"
grep -q '^systemd-resolve:' "$W/passwd" || echo 'systemd-resolve:x:991:991::/:/usr/sbin/nologin' >>"$W/passwd"
grep -q '^systemd-resolve:' "$W/group" || echo 'systemd-resolve:x:991:' >>"$W/group"
mount --bind "$W/passwd" /etc/passwd
mount --bind "$W/group" /etc/group
chown systemd-resolve:systemd-resolve /run/systemd/resolve  # resolved insists
echo "nameserver 127.0.0.53" >"$W/resolv.conf"
mount --bind "$W/resolv.conf" /etc/resolv.conf
cat >"$W/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/>
    <allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
  <includedir>$R/usr/share/dbus-1/system.d</includedir>
</busconfig>
CONF
dbus-daemon --config-file="$W/bus.conf" --nofork --nopidfile &
pids+=($!)
for _ in $(seq 50); do [ -S /run/dbus/system_bus_socket ] && break; sleep 0.1; done
SYSTEMD_LOG_LEVEL=info "$R/lib/systemd/systemd-resolved" 2>"$W/resolved.log" &
pids+=($!)
for _ in $(seq 50); do resolvectl status >/dev/null 2>&1 && break; sleep 0.1; done
resolvectl status | head -5

step "create VM a"
banger vm create --name a --memory 512M
step "dns status before setup (expected: not configured, exit 1)"
if banger dns status; then echo "FAIL: status said ok before setup"; exit 1; fi
step "dns setup"
banger dns setup
resolvectl dns banger0
resolvectl domain banger0
step "the host resolves a.vm and ssh root@a.vm works"
getent hosts a.vm
key=$(find "$BANGER_HOME" -name 'id_ed25519' | head -1)
ssh -i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=10 root@a.vm 'echo "ssh to $(hostname) via a.vm ok"'
banger dns status
step "resolved forgets the link; a daemon restart re-applies it"
resolvectl revert banger0
if getent hosts a.vm; then echo "FAIL: still resolves after revert"; exit 1; fi
banger daemon stop
banger vm list >/dev/null  # starts the daemon again; it sets the bridge up
for _ in $(seq 100); do resolvectl domain banger0 | grep -q '~vm' && break; sleep 0.1; done
resolvectl domain banger0
getent hosts a.vm
step "dns teardown"
banger dns teardown || true
resolvectl domain banger0
if getent hosts a.vm; then echo "FAIL: a.vm still resolves after teardown"; exit 1; fi
echo "a.vm no longer resolves on the host"
step "all host DNS steps passed"
