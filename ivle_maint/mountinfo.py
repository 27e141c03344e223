"""The kernel's mount table (/proc/PID/mountinfo), parsed, and path tests.

mountinfo is the one honest source: /etc/mtab may be stale and umount(8)'s
view depends on util-linux.  The kernel escapes space, tab, newline and
backslash in paths as three-digit octal (\\040 \\011 \\012 \\134); we decode
on bytes and then with the filesystem encoding (surrogateescape), so a
name that is not UTF-8 still round-trips to the umount2 syscall.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_OCTAL = re.compile(rb"\\([0-7]{3})")

# What the kernel appends to a mount point whose directory was removed.
DELETED_SUFFIX = " (deleted)"


class MountinfoError(ValueError):
    """A line that is not in mountinfo's format."""


@dataclass(frozen=True)
class Mount:
    """One mount, as one line of mountinfo describes it (see proc(5))."""

    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # the path inside the source filesystem that is mounted
    mountpoint: str
    options: tuple[str, ...]
    optional: tuple[str, ...]  # shared:N, master:N, propagate_from:N, unbindable
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    @property
    def depth(self) -> int:
        """Components in the mount point; '/' is 0."""
        return len(_components(self.mountpoint))


def unescape(field: bytes | str) -> str:
    """Decode mountinfo's \\ooo escapes; other backslashes are left alone."""
    raw = field.encode("utf-8", "surrogateescape") if isinstance(field, str) else field
    if b"\\" not in raw:  # the common case: nothing escaped
        return os.fsdecode(raw)
    decoded = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), raw)
    return os.fsdecode(decoded)


def escape(path: str) -> str:
    """A path for one line of output, escaped as mountinfo escapes it.

    Space, tab, newline and backslash become \\040 \\011 \\012 \\134 (as
    the kernel writes them), and so does any other control character (C1
    ones too: U+009B is a CSI) and any byte that is not UTF-8, so a hostile
    directory name can neither split a line, drive the terminal nor fail
    to print.  unescape() turns the result back into the path.
    """
    return "".join("".join(f"\\{b:03o}" for b in os.fsencode(c)) if _unprintable(c) else c
                   for c in path)


def _unprintable(char: str) -> bool:
    code = ord(char)
    return code <= 0x20 or 0x7F <= code <= 0x9F or 0xDC80 <= code <= 0xDCFF or char == "\\"


def parse_line(line: bytes | str) -> Mount:
    """One mountinfo line; MountinfoError when it is malformed."""
    raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
    # Split on single spaces: the kernel separates with one space, and a
    # real space inside a path is always escaped.
    fields = raw.rstrip(b"\n").split(b" ")
    try:
        sep = fields.index(b"-", 6)
        mount_id, parent_id = int(fields[0]), int(fields[1])
    except (ValueError, IndexError):
        raise MountinfoError(f"not a mountinfo line: {raw[:200]!r}") from None
    if len(fields) < sep + 3:
        raise MountinfoError(f"mountinfo line ends early: {raw[:200]!r}")
    text = [os.fsdecode(f) for f in fields]
    return Mount(
        mount_id=mount_id,
        parent_id=parent_id,
        device=text[2],
        root=unescape(fields[3]),
        mountpoint=unescape(fields[4]),
        options=tuple(text[5].split(",")),
        optional=tuple(text[6:sep]),
        fstype=unescape(fields[sep + 1]),
        source=unescape(fields[sep + 2]),
        super_options=tuple(text[sep + 3].split(",")) if len(fields) > sep + 3 else (),
    )


def parse(data: bytes | str) -> list[Mount]:
    """Every mount in a mountinfo text, in the kernel's (mount) order."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return [parse_line(line) for line in raw.split(b"\n") if line.strip()]


def read(pid: int | str = "self") -> list[Mount]:
    """The mounts seen by a process (by default: this one)."""
    with open(f"/proc/{pid}/mountinfo", "rb") as handle:
        return parse(handle.read())


def _components(path: str | os.PathLike[str]) -> list[str]:
    """The names in an absolute path ('//' and '.' folded, as PurePosixPath)."""
    return [part for part in os.fspath(path).split("/") if part not in ("", ".")]


def is_below(path: str | os.PathLike[str], top: str | os.PathLike[str]) -> bool:
    """True when path lies strictly inside top, comparing whole components.

    Both must be absolute and already free of symlinks (mountinfo paths
    are; resolve a configured directory with os.path.realpath first).
    '/jailmounts2' is not below '/jailmounts'.  Plain string work: this
    runs for every mount of every pass.
    """
    inner, outer = _components(path), _components(top)
    return len(inner) > len(outer) and inner[: len(outer)] == outer


def is_at_or_below(path: str | os.PathLike[str], top: str | os.PathLike[str]) -> bool:
    inner, outer = _components(path), _components(top)
    return inner[: len(outer)] == outer


def tree_depth(mount: Mount, by_id: dict[int, Mount]) -> int:
    """How many of the table's mounts lie under this one in the mount tree."""
    depth, seen, parent = 0, {mount.mount_id}, by_id.get(mount.parent_id)
    while parent is not None and parent.mount_id not in seen:
        seen.add(parent.mount_id)
        depth += 1
        parent = by_id.get(parent.parent_id)
    return depth


def mounts_below(top: str | os.PathLike[str], mounts: list[Mount] | None = None) -> list[Mount]:
    """Mounts strictly inside top (never top itself), in an unmount order.

    Children come before their parents, and of mounts stacked on one
    point the one on top (a child of the one below) first.  Mount IDs are
    reused, so the order comes from the parent links, not from the IDs.
    """
    table = read() if mounts is None else mounts
    by_id = {m.mount_id: m for m in table}
    inside = [m for m in table if is_below(m.mountpoint, top)]
    return sorted(inside, key=lambda m: (tree_depth(m, by_id), m.depth), reverse=True)
