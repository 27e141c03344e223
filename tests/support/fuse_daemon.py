"""A FUSE filesystem served by a thread of the test: what a student's
fusermount daemon can do in a jail, reduced to the harm.

It answers INIT, then every GETATTR with the owner it chooses (any uid:
the kernel passes a FUSE daemon's word on), every other request with an
error, and records each request's opcode, so a test can see whether
ivle-maint asked it anything at all (a daemon that never answers would
have held that call for ever).  Root only (mount(2) of fuse)."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INIT, GETATTR, FORGET, INTERRUPT, BATCH_FORGET = 26, 3, 2, 36, 42
_IN_HEADER = struct.Struct("<IIQQIIIHH")  # fuse_in_header: 40 bytes
_OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header
_libc = ctypes.CDLL(None, use_errno=True)


def _reply(fd: int, unique: int, body: bytes = b"", error: int = 0) -> None:
    os.write(fd, _OUT_HEADER.pack(_OUT_HEADER.size + len(body), error, unique) + body)


def _attr(uid: int) -> bytes:
    """fuse_attr_out: no caching (valid 0 s), a directory owned by UID."""
    attr = struct.pack("<QQQQQQIIIIIIIIII", 1, 0, 0, 0, 0, 0, 0, 0, 0,
                       0o40755, 2, uid, uid, 0, 4096, 0)
    return struct.pack("<QII", 0, 0, 0) + attr


def _serve(fd: int, uid: int, asked: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        if not select.select([fd], [], [], 0.05)[0]:
            continue
        try:
            data = os.read(fd, 1 << 18)
        except OSError:
            return  # unmounted
        _, opcode, unique, *_ = _IN_HEADER.unpack_from(data)
        if opcode == INIT:
            _reply(fd, unique, struct.pack("<IIIIHHIIHHI7I", 7, 31, 0, 0, 0, 0, 4096, 1,
                                           0, 0, 0, *[0] * 7))
            continue
        asked.append(opcode)
        if opcode == GETATTR:
            _reply(fd, unique, _attr(uid))
        elif opcode not in (FORGET, BATCH_FORGET, INTERRUPT):  # these get no answer
            _reply(fd, unique, error=-errno.ENOSYS)


@contextmanager
def fuse_mount(point: Path, *, uid: int) -> Iterator[list[int]]:
    """A FUSE mount on POINT whose every file is UID's; yields the opcodes
    of the requests it was asked (INIT aside), and unmounts at the end."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = f"fd={fd},rootmode=40755,user_id=0,group_id=0,allow_other"
    asked: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(fd, uid, asked, stop), daemon=True)
    try:
        if _libc.mount(b"student", os.fsencode(point), b"fuse", 0, options.encode()) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(point))
        thread.start()
        try:
            yield asked
        finally:
            _libc.umount2(os.fsencode(point), 2)  # MNT_DETACH
            stop.set()
            thread.join()
    finally:
        os.close(fd)  # the connection ends: nothing waits on it any more
