"""ext4 image helpers: build, inspect, clone, grow and edit images without mounting them.

Everything here works on regular files and needs no root: `mkfs.ext4 -d` populates a
filesystem from a directory, `debugfs -w` edits one in place and `resize2fs` grows
it. Nothing mounts an image (no loop devices), so these helpers run unprivileged and
never leave mounts behind. None of them may be used on an image a running VM has
open: the guest kernel caches metadata and would overwrite (or be confused by) our
changes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shlex
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from banger.errors import BangerError, CommandFailed, InvalidInput
from banger.system import run

MiB = 1024 * 1024
BLOCK_SIZE = 4096

_SUPERBLOCK_OFFSET = 1024
_EXT4_MAGIC = 0xEF53
_STATE_VALID = 0x0001  # s_state: cleanly unmounted
_STATE_ERROR = 0x0002  # s_state: errors detected
_INCOMPAT_RECOVER = 0x0004  # journal needs replay
_INCOMPAT_64BIT = 0x0080  # block counts have a high 32-bit half
_COMPAT_HAS_JOURNAL = 0x0004
_INCOMPAT_COMPRESSION = 0x0001  # never supported by Linux
_INCOMPAT_JOURNAL_DEV = 0x0008  # an external journal, not a filesystem
_INCOMPAT_EXTENTS = 0x0040  # the defining ext4 feature (ext2/ext3 lack it)
_FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h


class NotExt4(BangerError):
    code = "not_ext4"
    http_status = 422


@dataclass(frozen=True)
class Superblock:
    """The few superblock fields we act on (all little-endian, see ext4 disk layout)."""

    blocks: int
    block_size: int
    mount_time: int
    last_check: int
    state: int
    incompat: int
    compat: int = 0
    rev_level: int = 1
    log_block_size: int = 2

    @property
    def size_bytes(self) -> int:
        return self.blocks * self.block_size

    @property
    def needs_recovery(self) -> bool:
        return bool(self.incompat & _INCOMPAT_RECOVER)

    @property
    def needs_check(self) -> bool:
        """True when resize2fs would refuse to run without a prior `e2fsck -f`."""
        return (
            self.needs_recovery
            or not self.state & _STATE_VALID
            or bool(self.state & _STATE_ERROR)
            or self.last_check < self.mount_time
        )


def read_superblock(path: Path) -> Superblock | None:
    """The superblock of `path`, or None when it is not an ext2/3/4 filesystem."""
    try:
        with open(path, "rb") as f:
            f.seek(_SUPERBLOCK_OFFSET)
            raw = f.read(1024)
    except IsADirectoryError:
        return None
    if len(raw) < 1024:
        return None

    def u32(offset: int) -> int:
        return int(struct.unpack_from("<I", raw, offset)[0])

    def u16(offset: int) -> int:
        return int(struct.unpack_from("<H", raw, offset)[0])

    if u16(0x38) != _EXT4_MAGIC:
        return None
    incompat = u32(0x60)
    blocks_hi = u32(0x150) if incompat & _INCOMPAT_64BIT else 0
    return Superblock(
        blocks=u32(0x04) | (blocks_hi << 32),
        block_size=1024 << min(u32(0x18), 16),
        mount_time=u32(0x2C),
        last_check=u32(0x40),
        state=u16(0x3A),
        incompat=incompat,
        compat=u32(0x5C),
        rev_level=u32(0x4C),
        log_block_size=u32(0x18),
    )


def is_ext4(path: Path) -> bool:
    """True when `path` holds an ext2/3/4 superblock (magic 0xEF53 at byte 1080).

    The three share the magic; the guest's ext4 driver mounts all of them.
    """
    try:
        return read_superblock(path) is not None
    except OSError:
        return False


def require_ext4(path: Path, what: str = "image") -> Superblock:
    """The superblock of `path`, or a NotExt4 error that names the file and the fix."""
    try:
        sb = read_superblock(path)
    except FileNotFoundError:
        raise NotExt4(
            f"{what} {path} does not exist", hint="check the path (it must be a file)"
        ) from None
    except PermissionError:
        raise NotExt4(
            f"{what} {path} is not readable by this user",
            hint=f"fix its permissions (e.g. chmod a+r {shlex.quote(str(path))})",
        ) from None
    if sb is None:
        raise NotExt4(
            f"{what} {path} is not an ext4 filesystem (no ext4 superblock at byte 1080)",
            hint="pass a raw ext4 image, e.g. made with `mkfs.ext4 -d DIR FILE SIZE`; "
            "partitioned disks, qcow2 and tarballs must be converted first",
        )
    problem = _ext4_problem(sb, path.stat().st_size)
    if problem:
        raise NotExt4(
            f"{what} {path} {problem}",
            hint="make a real ext4 image (`mkfs.ext4 -d DIR FILE SIZE`), or convert an "
            f"ext2/ext3 one: `tune2fs -O extents,has_journal {shlex.quote(str(path))}` "
            "then `e2fsck -fy` it",
        )
    return sb


def _ext4_problem(sb: Superblock, file_size: int) -> str:
    """Why a filesystem with the ext magic is not an ext4 image a guest can boot, or ""."""
    if sb.rev_level < 1 or sb.log_block_size > 6 or sb.blocks == 0:
        return "has a damaged or ancient ext superblock (revision 0 or a bad block size)"
    if sb.incompat & _INCOMPAT_JOURNAL_DEV:
        return "is an external ext journal device, not a filesystem"
    if sb.incompat & _INCOMPAT_COMPRESSION:
        return "uses ext2 compression, which Linux never supported"
    if not sb.incompat & _INCOMPAT_EXTENTS:
        kind = "ext3" if sb.compat & _COMPAT_HAS_JOURNAL else "ext2"
        return f"is {kind}, not ext4 (no `extents` feature)"
    if sb.size_bytes > file_size:
        return f"is truncated: its superblock says {sb.size_bytes} bytes, the file has {file_size}"
    return ""


def tree_size(root: Path) -> int:
    """Bytes a directory tree needs on ext4: data rounded up to blocks plus inode overhead.

    Symlinks are not followed and other filesystems mounted below `root` are skipped.
    """
    dev = root.lstat().st_dev
    total = 0
    seen: set[int] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
        total += BLOCK_SIZE + 256
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1:  # hard links share their blocks
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            total += 256 + -(-st.st_size // BLOCK_SIZE) * BLOCK_SIZE
    return total


def round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def mkfs_from_dir(
    src: Path, image: Path, size_bytes: int, label: str, *, root_mode: int = 0o755
) -> None:
    """Make `image` a sparse ext4 of `size_bytes` holding a copy of `src` (as its root).

    Ownership, modes, xattrs (file capabilities) and hard links are copied as they are
    in `src`; the filesystem's root directory gets `root_mode` (mke2fs ignores the mode
    of `src` itself). Block size and inode size are fixed instead of letting mke2fs
    pick its "small" profile for little images (1 KiB blocks, 128-byte inodes), because
    work disks are grown to many GiB later and keep the geometry they were made with.
    """
    if size_bytes % BLOCK_SIZE:
        raise InvalidInput(f"ext4 size {size_bytes} is not a multiple of {BLOCK_SIZE}")
    if len(label.encode()) > 16:
        raise InvalidInput(f"ext4 label {label!r} is longer than 16 bytes")
    with open(image, "wb") as f:
        f.truncate(size_bytes)  # sparse: mke2fs only writes metadata and file data
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            str(BLOCK_SIZE),
            "-I",
            "256",
            "-i",
            "16384",
            "-m",
            "0",  # no reserved blocks: everything in a VM runs as root anyway
            "-L",
            label,
            "-E",
            # lazy_journal_init: the file was just truncated, so the journal area is a
            # hole that already reads as zeros; writing 16-64 MiB of zeros would only
            # make every clone of the image that much bigger.
            "root_owner=0:0,lazy_journal_init=1",
            "-d",
            str(src),
            str(image),
        ],
        timeout=1800,
    )
    if root_mode != 0o755:
        run(["debugfs", "-w", "-R", f"sif <2> mode 0{stat.S_IFDIR | root_mode:o}", str(image)])


def clone_file(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` as cheaply as the filesystem allows; returns how.

    "reflink": FICLONE shared the blocks (btrfs, XFS, bcachefs): instant and
    copy-on-write. "sparse": a copy of the data regions only (SEEK_DATA/SEEK_HOLE),
    so a mostly empty 8 GiB image costs what it holds, not 8 GiB. `dst` is replaced;
    it gets `src`'s permission bits.
    """
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        os.fchmod(fout.fileno(), stat.S_IMODE(os.fstat(fin.fileno()).st_mode))
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return "reflink"
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                raise
        _copy_sparse(fin.fileno(), fout.fileno())
    return "sparse"


def _copy_sparse(fin: int, fout: int) -> None:
    size = os.fstat(fin).st_size
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fin, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(fin, start, os.SEEK_HOLE)
        _copy_range(fin, fout, start, end - start)
        pos = end
    os.ftruncate(fout, size)  # a trailing hole has no data to write


def _copy_range(fin: int, fout: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        chunk = min(length - done, 64 * MiB)
        try:
            n = os.copy_file_range(fin, fout, chunk, offset + done, offset + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            data = os.pread(fin, min(chunk, 4 * MiB), offset + done)
            n = os.pwrite(fout, data, offset + done)
        if n == 0:
            raise OSError(errno.EIO, "source file shrank during copy")
        done += n


def fsck(image: Path, *, force: bool = True, discard: bool = False) -> None:
    """`e2fsck -y` (with `-f` by default); replays the journal and repairs what it can.
    `discard`: also punch holes where the free blocks are (see `compact`)."""
    argv = ["e2fsck", "-y", *(["-f"] if force else []), *(["-E", "discard"] if discard else [])]
    res = run([*argv, str(image)], check=False, timeout=1800)
    # Exit codes 1 and 2 mean "errors corrected"; 4 and above mean it could not.
    if res.returncode >= 4:
        tail = " | ".join(res.out.strip().splitlines()[-3:])
        raise CommandFailed(
            f"e2fsck could not repair {image} (exit {res.returncode}): {tail}",
            hint=f"inspect it with `e2fsck -fn {image}`; restore it from a backup or recreate it",
        )


def grow(image: Path, size_bytes: int) -> bool:
    """Grow the file and its ext4 filesystem to `size_bytes`; False when already that big.

    `e2fsck -f` runs only when resize2fs would insist on it (the filesystem was
    mounted since its last check, is not clean, or has a journal to replay), so a
    freshly cloned work-seed grows in milliseconds. Growth beyond ~1024x the original
    size makes resize2fs move metadata (slower, still offline-safe). The journal keeps
    the size it was created with.
    """
    sb = require_ext4(image)
    size_bytes = round_up(size_bytes, BLOCK_SIZE)
    if size_bytes <= sb.size_bytes and image.stat().st_size >= sb.size_bytes:
        return False
    if sb.needs_check:
        fsck(image)
    if image.stat().st_size < size_bytes:
        os.truncate(image, size_bytes)
    run(["resize2fs", str(image), f"{size_bytes // 1024}K"], timeout=1800)
    return True


def compact(image: Path) -> None:
    """Check (and repair) `image` and punch holes where its free blocks are, so the
    blocks a VM wrote and then freed (apt's downloads, deleted files) cost no space
    in the file or in the clones made from it (`e2fsck -E discard` on a regular file)."""
    fsck(image, discard=True)


def shrink_to_fit(image: Path, floor: int, slack_ratio: float = 0.5, slack: int = 64 * MiB) -> int:
    """Shrink a checked `image` (see `compact`) to what it holds plus slack, never
    below `floor` nor above its size now; returns the new size. Clones of it are
    grown again when a VM is made (`grow`), which is cheap."""
    sb = require_ext4(image)
    res = run(["resize2fs", "-P", str(image)], timeout=600)
    m = re.search(r"minimum size of the filesystem:\s*(\d+)", res.out)
    if m is None:
        raise CommandFailed(f"resize2fs -P said nothing usable about {image}: {res.out.strip()}")
    used = int(m.group(1)) * sb.block_size
    target = max(floor, round_up(int(used * (1 + slack_ratio)) + slack, 16 * MiB))
    if target >= sb.size_bytes:
        return sb.size_bytes
    run(["resize2fs", str(image), f"{target // 1024}K"], timeout=1800)
    os.truncate(image, target)
    return target


def write_file_into(
    image: Path,
    guest_path: str,
    data: bytes,
    mode: int = 0o600,
    *,
    dir_mode: int = 0o700,
    uid: int = 0,
    gid: int = 0,
) -> None:
    """Write `data` to `guest_path` inside the ext4 `image` with debugfs, no mount needed.

    `guest_path` is absolute *within the filesystem*: for a work disk mounted at /root,
    the guest's /root/.ssh/authorized_keys is "/.ssh/authorized_keys". Missing parent
    directories are created with `dir_mode`, owned by uid:gid (existing ones are left as
    they are); the file is replaced and gets `mode`, uid:gid. debugfs exits 0 even when a
    command fails, so the result is read back and compared.
    """
    path = PurePosixPath(guest_path)
    if not path.is_absolute() or ".." in path.parts or path.name in ("", "."):
        raise InvalidInput(f"guest path {guest_path!r} must be absolute, without '..'")
    if any(c in guest_path for c in "\n\"'\\") or " " in guest_path:
        raise InvalidInput(f"guest path {guest_path!r} contains characters debugfs cannot quote")
    sb = require_ext4(image)
    if sb.needs_recovery:
        # Writing next to an unreplayed journal would be undone (or corrupted) by the
        # replay at the next mount.
        fsck(image, force=False)
    cmds: list[str] = []
    for parent in reversed(path.parents[:-1]):  # outermost first, "/" excluded
        if not _exists(image, str(parent)):
            cmds += [
                f"mkdir {parent}",
                f"sif {parent} mode 0{stat.S_IFDIR | dir_mode:o}",
                f"sif {parent} uid {uid}",
                f"sif {parent} gid {gid}",
            ]
    with tempfile.NamedTemporaryFile(prefix="banger-debugfs-") as tmp:
        tmp.write(data)
        tmp.flush()
        cmds += [
            f"cd {path.parent}",
            f"rm {path.name}",  # fails harmlessly when there is nothing to replace
            f"write {tmp.name} {path.name}",
            f"sif {path.name} mode 0{stat.S_IFREG | mode:o}",
            f"sif {path.name} uid {uid}",
            f"sif {path.name} gid {gid}",
        ]
        run(["debugfs", "-w", "-f", "-", str(image)], input="\n".join(cmds).encode() + b"\n")
    if read_file_from(image, guest_path) != data:
        raise CommandFailed(
            f"debugfs did not write {guest_path} into {image}",
            hint=f"check the image with `e2fsck -fn {image}` and that it has free space",
        )


def read_file_from(image: Path, guest_path: str) -> bytes | None:
    """The contents of `guest_path` in the ext4 `image`, or None when it does not exist."""
    if not _exists(image, guest_path):
        return None
    return run(["debugfs", "-R", f"cat {guest_path}", str(image)]).stdout


def _exists(image: Path, guest_path: str) -> bool:
    res = run(["debugfs", "-R", f"stat {guest_path}", str(image)], check=False)
    return res.returncode == 0 and b"Inode:" in res.stdout


_STAT_FIELD = re.compile(r"\b(Type|Mode|User|Group|Size):\s+(\S+)")
_TYPES = {"regular": stat.S_IFREG, "directory": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def inode_info(image: Path, guest_path: str) -> dict[str, int] | None:
    """type (S_IF*), mode (permission bits), user, group and size of `guest_path` in
    `image`, from `debugfs stat`; None when it does not exist."""
    res = run(["debugfs", "-R", f"stat {guest_path}", str(image)], check=False)
    if b"Inode:" not in res.stdout:
        return None
    info: dict[str, int] = {}
    for m in _STAT_FIELD.finditer(res.out):
        key, value = m.group(1).lower(), m.group(2)
        if key in info:  # the first occurrence is the inode's; later ones are not
            continue
        if key == "type":
            info[key] = _TYPES.get(value, 0)
        else:
            info[key] = int(value, 8 if key == "mode" else 10)
    return info


def _debugfs_quote(path: str) -> str | None:
    """`path` as one debugfs argument, or None when debugfs cannot take it."""
    if any(c in path for c in '"\n\\'):
        return None
    return f'"{path}"'


def _debugfs_script(image: Path, cmds: list[str], *, write: bool = False) -> list[str]:
    """Run `cmds` in one debugfs; the output of each command, in order."""
    if not cmds:
        return []
    argv = ["debugfs", *(["-w"] if write else []), "-f", "-", str(image)]
    out = run(argv, input="\n".join(cmds).encode() + b"\n", timeout=600).out
    sections: list[str] = []
    for line in out.splitlines(keepends=True):
        if line.startswith("debugfs: "):
            sections.append("")
        elif sections:
            sections[-1] += line
    return sections[-len(cmds) :] if len(sections) >= len(cmds) else sections


_EA_NAME = re.compile(r"^  (\S+) \((\d+)\)", re.MULTILINE)


def copy_dir_out(image: Path, guest_dir: str, dest: Path) -> list[str]:
    """Copy the directory `guest_dir` of `image` to `dest/<its name>` (debugfs rdump,
    no mount). rdump drops setuid/setgid/sticky bits, xattrs (file capabilities) and,
    unless run as root, ownership: the returned debugfs commands restore all of them
    on a filesystem whose root is that copied directory (see `mkfs_from_dir`); run
    them there with `restore_metadata`."""
    run(["debugfs", "-R", f"rdump {guest_dir} {dest}", str(image)], timeout=600)
    tree = dest / PurePosixPath(guest_dir).name
    if not tree.is_dir():
        return []
    subdirs = sorted(
        str(Path(d).relative_to(tree) / name)
        for d, dirs, _ in os.walk(tree)
        for name in dirs
        if not os.path.islink(os.path.join(d, name))
    )
    rels = ["", *subdirs]
    base = guest_dir.rstrip("/")
    listing_cmds: list[str] = []
    listed: list[str] = []
    for rel in rels:
        q = _debugfs_quote(f"{base}/{rel}" if rel else base)
        if q is not None:
            listing_cmds.append(f"ls -p {q}")
            listed.append(rel)
    entries: list[tuple[str, int, int, int]] = []  # path in the copy, mode, uid, gid
    for rel, text in zip(listed, _debugfs_script(image, listing_cmds), strict=False):
        for line in text.splitlines():
            fields = line.split("/")
            if len(fields) != 8 or not fields[2].isdigit():
                continue
            name, mode, uid, gid = fields[5], int(fields[2], 8), int(fields[3]), int(fields[4])
            if name == "..":
                continue
            if name == ".":
                if rel:
                    continue  # listed under its parent already
                entries.append(("/", mode, uid, gid))
            else:
                entries.append((f"/{rel}/{name}" if rel else f"/{name}", mode, uid, gid))
    cmds: list[str] = []
    ea_cmds: list[str] = []
    ea_paths: list[tuple[str, str]] = []
    for path, mode, uid, gid in entries:
        q = _debugfs_quote(path)
        src = _debugfs_quote(base + path if path != "/" else base)
        if q is None or src is None:
            continue
        cmds += [f"sif {q} mode 0{mode:o}", f"sif {q} uid {uid}", f"sif {q} gid {gid}"]
        ea_cmds.append(f"ea_list {src}")
        ea_paths.append((src, q))
    attrs = tempfile.mkdtemp(prefix="xattrs-", dir=dest)
    get: list[str] = []
    for (src, q), text in zip(ea_paths, _debugfs_script(image, ea_cmds), strict=False):
        for m in _EA_NAME.finditer(text):
            value = os.path.join(attrs, str(len(get)))
            get.append(f"ea_get -f {value} {src} {m.group(1)}")
            cmds.append(f"ea_set -f {value} {q} {m.group(1)}")
    _debugfs_script(image, get)
    return cmds


def restore_metadata(image: Path, cmds: list[str]) -> None:
    """Apply what `copy_dir_out` returned to `image` (while its temporary directory,
    which holds the xattr values, still exists)."""
    _debugfs_script(image, cmds, write=True)
