"""The mountinfo parser: fields, octal escapes, path tests, unmount order."""

from __future__ import annotations

import os

import pytest

from ivle_maint import mountinfo
from ivle_maint.mountinfo import Mount, MountinfoError, is_below, mounts_below, parse, unescape

# Lines in the kernel's format (proc(5)), including optional fields, an
# empty optional list and escaped paths.
SAMPLE = b"""\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 27 254:1 /var/lib/ivle/jails/__base__ /srv/jailmounts/alice ro,relatime shared:1 master:7 \
- ext4 /dev/vda1 rw
41 40 254:1 /var/lib/ivle/jails/alice/home /srv/jailmounts/alice/home rw,relatime - ext4 \
/dev/vda1 rw
42 27 0:50 / /srv/jail\\040mounts/bob\\011tab\\012nl\\134bs rw - tmpfs my\\040tmp rw,size=10k
"""


def test_fields_of_a_plain_line():
    mount = parse(SAMPLE)[0]
    assert mount == Mount(
        mount_id=22,
        parent_id=27,
        device="0:21",
        root="/",
        mountpoint="/proc",
        options=("rw", "relatime"),
        optional=(),
        fstype="proc",
        source="proc",
        super_options=("rw",),
    )


def test_optional_fields_are_kept_and_the_separator_found():
    mount = parse(SAMPLE)[2]
    assert mount.optional == ("shared:1", "master:7")
    assert mount.root == "/var/lib/ivle/jails/__base__"
    assert mount.mountpoint == "/srv/jailmounts/alice"
    assert mount.readonly
    assert mount.fstype == "ext4" and mount.source == "/dev/vda1"


def test_octal_escapes_for_space_tab_newline_and_backslash():
    mount = parse(SAMPLE)[4]
    assert mount.mountpoint == "/srv/jail mounts/bob\ttab\nnl\\bs"
    assert mount.source == "my tmp"
    assert mount.super_options == ("rw", "size=10k")


def test_unescape_leaves_other_backslashes_and_decodes_non_utf8():
    assert unescape(r"/a\134b\x") == "/a\\b\\x"
    assert unescape(b"/caf\\303\\251") == "/café"
    # A name that is not UTF-8 must come back as the same bytes.
    weird = unescape(b"/j/\\377x")
    assert os.fsencode(weird) == b"/j/\xffx"


def test_malformed_lines_raise():
    with pytest.raises(MountinfoError):
        parse(b"22 27 0:21 / /proc rw,relatime proc proc rw\n")  # no separator
    with pytest.raises(MountinfoError):
        parse(b"x 27 0:21 / /proc rw - proc proc rw\n")
    with pytest.raises(MountinfoError):
        parse(b"22 27 0:21 / /proc rw -\n")


def test_blank_lines_are_skipped_and_str_input_accepted():
    assert len(parse(SAMPLE.decode() + "\n\n")) == 5


def test_is_below_compares_components_not_prefixes():
    assert is_below("/srv/jailmounts/alice", "/srv/jailmounts")
    assert is_below("/srv/jailmounts/a/b", "/srv/jailmounts/")
    assert not is_below("/srv/jailmounts", "/srv/jailmounts")
    assert not is_below("/srv/jailmounts2/alice", "/srv/jailmounts")
    assert not is_below("/srv/jail", "/srv/jailmounts")
    assert not is_below("/", "/srv")
    assert is_below("/srv", "/")


def test_mounts_below_skips_the_top_itself_and_siblings():
    table = parse(
        b"1 0 0:1 / / rw - ext4 r rw\n"
        b"2 1 0:2 / /m rw - tmpfs t rw\n"
        b"3 2 0:2 /x /m/alice rw - tmpfs t rw\n"
        b"4 1 0:2 /y /m2/alice rw - tmpfs t rw\n"
    )
    assert [m.mountpoint for m in mounts_below("/m", table)] == ["/m/alice"]


def test_unmount_order_children_first_even_with_reused_ids():
    # alice (id 30) was mounted first; bob's home got a low reused id 5;
    # a second mount (id 7) is stacked on alice and alice/home hangs off it.
    table = parse(
        b"1 0 0:1 / / rw - ext4 r rw\n"
        b"30 1 0:2 /t /m/alice ro - ext4 r rw\n"
        b"7 30 0:2 /t /m/alice ro - ext4 r rw\n"
        b"9 7 0:2 /h /m/alice/home rw - ext4 r rw\n"
        b"8 1 0:2 /t /m/bob ro - ext4 r rw\n"
        b"5 8 0:2 /h /m/bob/home rw - ext4 r rw\n"
    )
    order = [m.mount_id for m in mounts_below("/m", table)]
    assert order.index(9) < order.index(7) < order.index(30)
    assert order.index(5) < order.index(8)


def test_tree_depth_survives_a_parent_loop():
    table = parse(b"1 2 0:1 / /a rw - t s rw\n2 1 0:1 / /a/b rw - t s rw\n")
    by_id = {m.mount_id: m for m in table}
    assert mountinfo.tree_depth(table[0], by_id) == 1


def test_reading_this_process_table_finds_the_root():
    mounts = mountinfo.read()
    assert any(m.mountpoint == "/" for m in mounts)
    assert all(m.mountpoint.startswith("/") for m in mounts)


@pytest.mark.parametrize("path", ["/srv/jail mounts/bob\ttab\nnl\\bs", "/x\x1b[31m", "/caf\xe9",
                                  "/plain", "/csi\x9b2J", "/raw\udc9bbyte"])
def test_escape_is_the_kernels_and_round_trips(path):
    escaped = mountinfo.escape(path)
    assert not any(c in escaped for c in " \t\n\x1b\x9b\udc9b")
    escaped.encode("utf-8")  # printable under a strict UTF-8 locale
    assert mountinfo.unescape(escaped) == path
    assert mountinfo.escape("/a b\\") == "/a\\040b\\134"
