#!/usr/bin/env bash
# End-to-end smoke test of the banger workflow, as a user runs it, that fails on leaks.
#
#   scripts/verify.sh [--nat] [--keep] [--data-dir DIR] [--image NAME] [--engine NAME]
#   make verify ARGS="--nat"
#
# Runs in the boot tests' sandbox (tests/sandbox.py): a fresh network namespace
# (bgverify-<hex>) with a private daemon and BANGER_HOME, sharing the tests' artifact
# cache ($BANGER_TEST_CACHE/data) unless --data-dir names another data dir. Nothing
# touches the host's own network namespace. The workflow:
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
# removed at the end (also on failure and Ctrl-C), and it fails if any process of
# them survives; --keep leaves them for inspection and prints how to remove them.
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

SANDBOX=(env -u BANGER_HOME "$PY" -m tests.sandbox) # the boot tests' sandbox
NS=""
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

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n $NS ]] && ((KEEP)); then
        local envs="BANGER_HOME=$BANGER_HOME BANGER_DATA_DIR=$BANGER_DATA_DIR"
        echo
        echo "--keep: left namespace $NS, its daemon and $BANGER_HOME in place. Inspect with:"
        echo "  ip netns exec $NS env $envs $BANGER_BIN vm list"
        echo "Remove with:"
        echo "  cd $REPO && env $envs $PY -m tests.sandbox down --home $BANGER_HOME --ns $NS"
    elif [[ -n $NS ]]; then # stops the daemon and every process by PID, deletes all
        "${SANDBOX[@]}" down --home "$BANGER_HOME" --ns "$NS" || ((rc)) || rc=1
    fi
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

# The sandbox's namespace has no uplink: `up` pulls a missing image or kernel first,
# in the host namespace, with a daemon that is stopped again before ours starts (a
# daemon that never ran a VM sets up no bridge, TAP or nftables rule).
log "sandbox: a namespace and a private daemon (pulling missing artifacts first)"
UP=$("${SANDBOX[@]}" up --prefix bgverify- ${DATA_DIR:+--data-dir "$DATA_DIR"} ${IMAGE:+--image "$IMAGE"}) ||
    die "could not set up the sandbox (or pull its artifacts)"
eval "$UP" # NS, BANGER_HOME, BANGER_DATA_DIR
DATA=$BANGER_DATA_DIR
note "namespace $NS, private daemon under $BANGER_HOME, data dir $DATA"
# Files already in the data dir's tmp/ belong to someone else (the data dir may be
# shared); only new ones count as leaks.
tmp_entries() { [[ -d $DATA/tmp ]] && find "$DATA/tmp" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort; }
TMP_BEFORE=$(tmp_entries || true)

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

nat_rules() { "${SANDBOX[@]}" nat-rules --home "$BANGER_HOME" --ns "$NS"; }
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
if [[ -n $PID ]] && [[ -e /proc/$PID ]] && grep -qsF "$BANGER_HOME/" "/proc/$PID/cmdline"; then
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
# Hypervisor processes, TAPs other than the warm pool's, leases and VM rows, per-VM
# nftables rules and VM directories (tests/sandbox.py: Sandbox.leftovers).
LEAKS=()
FOUND=$("${SANDBOX[@]}" leaks --home "$BANGER_HOME" --ns "$NS") || die "could not check for leaks"
[[ -z $FOUND ]] || mapfile -t LEAKS <<<"$FOUND"
# New files in the data dir's tmp/
TMP_AFTER=$(tmp_entries || true)
NEW_TMP=$(comm -13 <(echo "$TMP_BEFORE") <(echo "$TMP_AFTER") | sed '/^$/d')
for f in $NEW_TMP; do LEAKS+=("file $DATA/tmp/$f"); done

if ((${#LEAKS[@]})); then
    printf "${RED}LEAK: %s${RESET}\n" "${LEAKS[@]}" >&2
    die "${#LEAKS[@]} leftover(s) after vm delete"
fi
note "no leaked processes, TAPs, leases, rules, VM directories or tmp files"
