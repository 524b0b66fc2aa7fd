#!/usr/bin/env bash
# End-to-end smoke test of the banger workflow, as a user runs it, that fails on leaks.
#
#   scripts/verify.sh [--nat] [--keep] [--data-dir DIR] [--image NAME] [--engine NAME]
#   make verify ARGS="--nat"
#
# Runs in a fresh network namespace (bgverify-<hex>) with a private daemon: temporary
# XDG state/config/runtime dirs, while the data dir stays yours (pulled images and
# kernels are shared) unless --data-dir names another one. Nothing touches the host's
# own network namespace. The workflow:
#
#   doctor → vm create verify-a [--nat] → vm ssh (write /root/f) → vm stop → vm start
#   → vm ssh (read /root/f back) → vm delete
#
# then it fails (exit 1) on anything the deleted VM left behind: a qemu/firecracker
# process, a TAP other than the warm pool's tap-pool-*, an address lease or VM row in
# the database, a `banger:<ip>` nftables rule, a VM directory in the state dir, or a
# new file in the data dir's tmp/. With --nat it also checks the VM's masquerade rule
# while it runs and that stop removes it (no outbound traffic test: the namespace has
# no uplink). A missing image or kernel is pulled first, in the host namespace, since
# the test namespace is offline. The namespace, daemon and temporary dirs are always
# removed at the end (also on failure and Ctrl-C); --keep leaves them for inspection
# and prints how to remove them.
#
# Exit codes: 0 passed, 1 a step failed or something leaked, 2 usage or host problem.
set -euo pipefail

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
}

NAT=0
KEEP=0
DATA_DIR=""
IMAGE=""
ENGINE=""
while (($#)); do
    case "$1" in
        --nat) NAT=1 ;;
        --keep) KEEP=1 ;;
        --data-dir)
            [[ $# -ge 2 ]] || { echo "error: --data-dir needs a directory" >&2; exit 2; }
            DATA_DIR=$2
            shift
            ;;
        --image)
            [[ $# -ge 2 ]] || { echo "error: --image needs a name" >&2; exit 2; }
            IMAGE=$2
            shift
            ;;
        --engine)
            [[ $# -ge 2 ]] || { echo "error: --engine needs auto, qemu or firecracker" >&2; exit 2; }
            case "$2" in auto | qemu | firecracker) ENGINE=$2 ;;
                *) echo "error: --engine must be auto, qemu or firecracker, not '$2'" >&2; exit 2 ;;
            esac
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ -n $DATA_DIR && ! -d $DATA_DIR ]]; then
    echo "error: --data-dir $DATA_DIR is not a directory" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "error: verify.sh needs root to create a network namespace (run it with sudo)" >&2
    exit 2
fi
# setup.sh may have put uv in ~/.local/bin (pip --user) without it being on PATH.
export PATH="$HOME/.local/bin:$PATH"
for tool in ip nft uv; do
    command -v "$tool" >/dev/null || { echo "error: '$tool' is not installed" >&2; exit 2; }
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# Resolve the project's interpreter once: `uv run` per command would add ~0.3 s each
# and could try to sync the environment from inside the namespace.
PY=$(uv run --quiet python -c 'import sys; print(sys.executable)')
BANGER_BIN=$(dirname "$PY")/banger
[[ -x $BANGER_BIN ]] || { echo "error: $BANGER_BIN missing (run 'make setup')" >&2; exit 2; }

ROOT=$(mktemp -d /tmp/bgverify-XXXXXX) # short: VM sockets live below it
NS=bgverify-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
mkdir -m 700 "$ROOT/state" "$ROOT/config" "$ROOT/run"
unset BANGER_HOME
export XDG_STATE_HOME=$ROOT/state XDG_CONFIG_HOME=$ROOT/config XDG_RUNTIME_DIR=$ROOT/run
if [[ -n $DATA_DIR ]]; then
    DATA_DIR=$(cd "$DATA_DIR" && pwd -P)
    if [[ $(basename "$DATA_DIR") == banger ]]; then
        export XDG_DATA_HOME=${DATA_DIR%/banger}
    else # banger appends /banger to XDG_DATA_HOME; a symlink maps any directory name
        mkdir "$ROOT/data"
        ln -s "$DATA_DIR" "$ROOT/data/banger"
        export XDG_DATA_HOME=$ROOT/data
    fi
fi
STATE=$XDG_STATE_HOME/banger
RUN=$XDG_RUNTIME_DIR/banger
DATA=${XDG_DATA_HOME:-$HOME/.local/share}/banger
NS_MADE=0

if [[ -t 1 ]]; then
    BOLD=$'\033[1m' RED=$'\033[31m' GREEN=$'\033[32m' RESET=$'\033[0m'
else
    BOLD="" RED="" GREEN="" RESET=""
fi
log() { printf '%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
note() { printf '    %s\n' "$*"; }
die() {
    printf '%sFAIL: %s%s\n' "$RED" "$*" "$RESET" >&2
    exit 1
}
# banger, in the namespace, bounded so a hang fails the test instead of blocking it.
b() { timeout 600 ip netns exec "$NS" "$BANGER_BIN" "$@"; }
# A field of a JSON object on stdin, e.g. `json_get state`.
json_get() { "$PY" -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"; }

# `daemon stop` talks over the UNIX socket, which works from any namespace; then the
# pid-file PID is killed if it is still there and is ours (its environment names $ROOT).
stop_daemon() {
    local pid
    pid=$(cat "$RUN/bangerd.pid" 2>/dev/null || true)
    if [[ -S $RUN/bangerd.sock ]]; then
        timeout 30 "$BANGER_BIN" daemon stop >/dev/null 2>&1 || true
    fi
    if [[ -n $pid ]] && grep -qsF "$ROOT" "/proc/$pid/environ"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 30); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local envs="XDG_STATE_HOME=$XDG_STATE_HOME XDG_CONFIG_HOME=$XDG_CONFIG_HOME"
    envs+=" XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR${XDG_DATA_HOME:+ XDG_DATA_HOME=$XDG_DATA_HOME}"
    if ((KEEP)); then
        echo
        echo "--keep: left namespace $NS, its daemon and $ROOT in place. Inspect with:"
        echo "  ip netns exec $NS env $envs $BANGER_BIN vm list"
        echo "Remove with:"
        echo "  env $envs $BANGER_BIN daemon stop; for p in \$(ip netns pids $NS); do kill \$p; done; ip netns del $NS; rm -rf $ROOT"
        if ((rc == 0)); then echo "verify: PASSED"; else echo "verify: FAILED (exit $rc)" >&2; fi
        exit "$rc"
    fi
    stop_daemon
    if ((NS_MADE)); then
        # Everything left in our namespace is ours: the daemon, VM processes.
        local pids
        pids=$(ip netns pids "$NS" 2>/dev/null)
        if [[ -n $pids ]]; then
            # shellcheck disable=SC2086 # word splitting intended: one pid per word
            kill -TERM $pids 2>/dev/null
            for _ in $(seq 30); do
                pids=$(ip netns pids "$NS" 2>/dev/null)
                [[ -z $pids ]] && break
                sleep 0.1
            done
            # shellcheck disable=SC2086
            [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
        fi
        ip netns del "$NS" || echo "warning: could not delete namespace $NS" >&2
    fi
    rm -rf "$ROOT"
    if ((rc == 0)); then
        printf '%sverify: PASSED%s\n' "$GREEN" "$RESET"
    else
        printf '%sverify: FAILED (exit %s)%s\n' "$RED" "$rc" "$RESET" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NS"
NS_MADE=1
ip -n "$NS" link set lo up
note "namespace $NS, private daemon state under $ROOT, data dir $DATA"
# Files already in the data dir's tmp/ belong to someone else (the data dir may be
# shared); only new ones count as leaks.
tmp_entries() { [[ -d $DATA/tmp ]] && find "$DATA/tmp" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort; }
TMP_BEFORE=$(tmp_entries || true)

# The test namespace has no uplink, so its daemon could not download a missing image
# or kernel. Pull those first in the host namespace, with a daemon that is stopped
# before the namespace's starts (a daemon that never ran a VM sets up no bridge, TAP
# or nftables rule).
missing_artifact() {
    "$PY" - "$IMAGE" <<'EOF'
import sys
from banger.artifacts.images.store import is_outdated as is_outdated_image
from banger.artifacts.images.store import load_image
from banger.artifacts.kernels.pull import is_outdated, load_kernel
from banger.config import load_config
from banger.paths import default_paths

paths = default_paths()
cfg = load_config(paths).config
image = sys.argv[1] or cfg.default_image
info = load_image(paths.images_dir, image)
if info is None or is_outdated_image(info):  # a create would rebuild it, offline
    print("image", image)
elif info.vmlinux is None:
    kernel = info.kernel or cfg.default_kernel
    k = load_kernel(paths.kernels_dir, kernel)
    if k is None or is_outdated(k):  # it would be re-pulled in the offline namespace
        print("kernel", kernel)
EOF
}
for _ in 1 2; do
    MISSING=$(missing_artifact) || die "could not inspect the data dir $DATA"
    read -r -a WHAT <<<"$MISSING"
    ((${#WHAT[@]})) || break
    log "banger ${WHAT[0]} pull ${WHAT[1]} (host namespace: the test namespace is offline)"
    timeout 3600 "$BANGER_BIN" "${WHAT[0]}" pull "${WHAT[1]}" || die "could not pull ${WHAT[0]} ${WHAT[1]}"
done
stop_daemon

log "banger doctor"
b doctor || die "banger doctor reported a failure"

create_args=(--name verify-a --json)
[[ -n $IMAGE ]] && create_args+=(--image "$IMAGE")
[[ -n $ENGINE ]] && create_args+=(--engine "$ENGINE")
((NAT)) && create_args+=(--nat)
log "banger vm create ${create_args[*]}"
VM_JSON=$(b vm create "${create_args[@]}") || die "vm create failed"
IP=$(json_get ip <<<"$VM_JSON")
PID=$(json_get pid <<<"$VM_JSON")
STATE_NOW=$(json_get state <<<"$VM_JSON")
[[ $STATE_NOW == running ]] || die "vm create returned state '$STATE_NOW', not running"
[[ -n $IP ]] || die "vm create returned no IP address"
note "verify-a running at $IP (engine pid ${PID:-?}); timings: $(json_get timings <<<"$VM_JSON")"

nat_rules() { # banger:<ip> rules in the namespace's banger table (none if no table)
    local listing
    listing=$(ip netns exec "$NS" nft -j list table ip banger 2>/dev/null) || return 0
    "$PY" -c '
import json, sys
text = sys.stdin.read()
items = json.loads(text)["nftables"] if text.strip() else []
for it in items:
    c = it.get("rule", {}).get("comment", "")
    if c.startswith("banger:") and c != "banger:base":
        print(c)
' <<<"$listing"
}
# Captured first, then grepped: `nat_rules | grep -q` could SIGPIPE the writer, which
# pipefail would report as a failure.
has_rule() { grep -qx "banger:$1" <<<"$(nat_rules)"; }

if ((NAT)); then
    log "NAT rule for $IP"
    has_rule "$IP" || die "no 'banger:$IP' rule in 'nft list table ip banger'"
    note "found banger:$IP in table ip banger"
    note "outbound internet check skipped: the test namespace has no uplink and this machine has no internet access"
fi

log "banger vm ssh verify-a -- 'echo hi > /root/f'"
b vm ssh verify-a -- 'echo hi > /root/f' || die "vm ssh (write) failed"

log "banger vm stop verify-a"
b vm stop verify-a || die "vm stop failed"
STATE_NOW=$(b vm show verify-a --json | json_get state)
[[ $STATE_NOW == stopped ]] || die "after stop the VM is '$STATE_NOW', not stopped"
if [[ -n $PID ]] && [[ -e /proc/$PID ]] && grep -qsF "$ROOT" "/proc/$PID/cmdline"; then
    die "engine process $PID still runs after vm stop"
fi
if ((NAT)); then
    has_rule "$IP" && die "rule banger:$IP is still there after vm stop"
    note "NAT rule removed on stop"
fi

log "banger vm start verify-a"
b vm start verify-a || die "vm start failed"
STATE_NOW=$(b vm show verify-a --json | json_get state)
[[ $STATE_NOW == running ]] || die "after start the VM is '$STATE_NOW', not running"
if ((NAT)); then
    has_rule "$IP" || die "rule banger:$IP was not restored by vm start"
fi

log "banger vm ssh verify-a -- cat /root/f"
GOT=$(b vm ssh verify-a -- cat /root/f) || die "vm ssh (read) failed"
[[ $GOT == hi ]] || die "/root/f holds '$GOT' after stop/start, expected 'hi' (work disk not kept?)"
note "/root/f survived stop/start"

log "banger vm delete verify-a"
if ! b vm delete verify-a; then
    note "delete of a running VM was refused (expected); deleting with --force"
    b vm delete --force verify-a || die "vm delete --force failed"
fi
LEFT=$(b vm list --json | "$PY" -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin)))')
[[ -z $LEFT ]] || die "vm list still shows: $LEFT"
note "vm list is empty"

log "checking for leaks"
LEAKS=()
# 1. hypervisor processes of this daemon: everything in the namespace but the daemon
DAEMON_PID=$(cat "$RUN/bangerd.pid" 2>/dev/null || true)
for p in $(ip netns pids "$NS"); do
    [[ $p == "$DAEMON_PID" ]] && continue
    comm=$(cat "/proc/$p/comm" 2>/dev/null || true)
    case "$comm" in qemu* | firecracker*) LEAKS+=("process $p ($comm) still running") ;; esac
done
# 2. TAP devices other than the warm pool's
TAPS=$(ip -n "$NS" -d -j link show | "$PY" -c '
import json, sys
for link in json.load(sys.stdin):
    info = link.get("linkinfo", {})
    if info.get("info_kind") == "tun" and info.get("info_data", {}).get("type") == "tap":
        if not link["ifname"].startswith("tap-pool-"):
            print(link["ifname"])
')
for t in $TAPS; do LEAKS+=("TAP $t left in namespace $NS"); done
# 3. leases and VM rows in the database
[[ -f $STATE/banger.db ]] || die "no database at $STATE/banger.db"
DB_LEFT=$("$PY" - "$STATE/banger.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
for table in ("leases", "vms"):
    if table in tables:
        for row in db.execute(f"SELECT * FROM {table}"):
            print(f"{table} row {row}")
EOF
)
while IFS= read -r line; do [[ -n $line ]] && LEAKS+=("database: $line"); done <<<"$DB_LEFT"
# 4. per-VM nftables rules
for r in $(nat_rules); do LEAKS+=("nftables rule $r in table ip banger"); done
# 5. VM directories in the state dir
if [[ -d $STATE/vms ]]; then
    for d in "$STATE"/vms/*; do [[ -e $d ]] && LEAKS+=("VM directory $d"); done
fi
# 6. new files in the data dir's tmp/
TMP_AFTER=$(tmp_entries || true)
NEW_TMP=$(comm -13 <(echo "$TMP_BEFORE") <(echo "$TMP_AFTER") | sed '/^$/d')
for f in $NEW_TMP; do LEAKS+=("file $DATA/tmp/$f"); done

if ((${#LEAKS[@]})); then
    printf "${RED}LEAK: %s${RESET}\n" "${LEAKS[@]}" >&2
    die "${#LEAKS[@]} leftover(s) after vm delete"
fi
note "no leaked processes, TAPs, leases, rules, VM directories or tmp files"
