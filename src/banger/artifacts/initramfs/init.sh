#!/bin/sh
# banger initramfs /init (busybox sh, runs as PID 1).
#
# Debian's cloud kernel builds virtio, virtio-mmio, virtio-blk and vsock as modules,
# so a microVM cannot reach its root disk without this step. The job is small:
# load the modules banger listed (dependencies first), find the root device named
# on the kernel command line, mount it and switch_root to the real init.
#
# Command line understood: root= (/dev/..., UUID=, LABEL=), rootfstype=, rootflags=,
# ro / rw (default ro, like the kernel), init= (default /sbin/init),
# rootwait (wait forever) or rootwait=SECONDS (default 10), quiet,
# rd.shell (on failure, open a shell on the console instead of panicking), and
# <module>.<param>=<value> for the modules loaded here.
# Networking (ip=) is left to the root filesystem: the kernel has no IP autoconfig.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
set -f # the command line is split on spaces, never globbed

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev

cmdline=$(cat /proc/cmdline)
root="" fstype="" rootflags="" rwmode=ro init=/sbin/init rootwait=10 quiet=0 shell=0
for arg in $cmdline; do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) fstype=${arg#rootfstype=} ;;
        rootflags=*) rootflags=${arg#rootflags=} ;;
        ro) rwmode=ro ;;
        rw) rwmode=rw ;;
        init=*) init=${arg#init=} ;;
        rootwait) rootwait=-1 ;;
        rootwait=*)
            case "${arg#rootwait=}" in
                "" | *[!0-9]*) ;; # not a number of seconds: keep the default
                *) rootwait=${arg#rootwait=} ;;
            esac
            ;;
        quiet) quiet=1 ;;
        rd.shell | rd.shell=1) shell=1 ;;
        rd.shell=0) shell=0 ;;
    esac
done

say() { echo "banger-initramfs: $*"; }
info() { [ "$quiet" = 1 ] || say "$*"; }

# On failure the default is to exit, which makes the kernel panic with our message
# just above it; with panic=N the VM then reboots (and QEMU -no-reboot or
# Firecracker stop), so an unattended microVM fails fast instead of hanging.
fail() {
    say "ERROR: $*"
    if [ "$shell" = 1 ]; then
        say "starting a shell on the console; exit it to give up"
        setsid cttyhack sh
    else
        say "add rd.shell to the kernel command line for a rescue shell"
    fi
    say "giving up: the kernel will now panic"
    exit 1
}

release=$(uname -r)
modules=0
if [ -f /etc/banger/modules ]; then
    while read -r mod; do
        [ -n "$mod" ] || continue
        params=""
        for arg in $cmdline; do
            case "$arg" in "$mod".*=*) params="$params ${arg#"$mod".}" ;; esac
        done
        # shellcheck disable=SC2086 # params is a list of key=value words
        if insmod "/lib/modules/$release/$mod.ko" $params; then
            modules=$((modules + 1))
        else
            say "warning: could not load module $mod (continuing)"
        fi
    done </etc/banger/modules
fi
info "loaded $modules modules for $release"

[ -n "$root" ] || fail "no root= on the kernel command line"

resolve() {
    case "$root" in
        UUID=* | LABEL=*) findfs "$root" 2>/dev/null ;;
        /dev/*) [ -b "$root" ] && echo "$root" ;;
        *) [ -b "/dev/$root" ] && echo "/dev/$root" ;;
    esac
}

ticks=0
limit=$((rootwait * 10))
dev=$(resolve)
while [ -z "$dev" ]; do
    if [ "$rootwait" -ge 0 ] && [ "$ticks" -ge "$limit" ]; then
        found=$(ls /sys/class/block 2>/dev/null | tr '\n' ' ')
        fail "root device $root did not appear within ${rootwait}s (block devices: ${found:-none})"
    fi
    [ "$ticks" = 10 ] && info "waiting for root device $root ..."
    sleep 0.1
    ticks=$((ticks + 1))
    dev=$(resolve)
done

opts=$rwmode
[ -n "$rootflags" ] && opts="$opts,$rootflags"
if [ -n "$fstype" ]; then
    mount -t "$fstype" -o "$opts" "$dev" /newroot || fail "cannot mount $dev ($fstype, $opts)"
else
    mount -o "$opts" "$dev" /newroot || fail "cannot mount $dev ($opts)"
fi
info "mounted $dev on / ($opts)"

# /sbin/init is often an absolute symlink (to systemd) that only resolves inside
# the new root, so a dangling link here is fine; only a missing name is an error.
if [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
    umount /newroot
    fail "$init does not exist on the root filesystem $dev"
fi

# Hand the API filesystems over so the real init finds them already mounted.
for fs in dev proc sys; do
    if [ -d "/newroot/$fs" ]; then
        mount --move "/$fs" "/newroot/$fs"
    else
        umount -l "/$fs"
    fi
done

exec switch_root -c /dev/console /newroot "$init" "$@"
