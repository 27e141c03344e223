"""Names from outside used as one file name and one argument: logins.

A login comes from IVLE's ``login`` table (or, when that cannot be read,
from the jail directories).  ivle-maint joins it to ``[[jails]] src`` and
passes it to ``ivle-remakeuser LOGIN...``, so a login is used only when it
is one plain name:

- a single path component: not empty, not ``.`` or ``..``, no ``/`` or
  NUL, at most NAME_MAX (255) bytes: ``src/LOGIN`` stays one directory
  below src, where IVLE's tool rebuilds it (``..`` would have it rebuild,
  and empty, src's parent);
- never an option: no leading ``-`` (``-a`` would make one batch rebuild
  every user beside the others, ``--help`` would rebuild nobody and exit 0);
- one visible word: nothing ``text.shown`` would escape, no space and no
  ``:`` (the tool tells a failure as ``Failed to recreate jail for LOGIN:
  WHY``: a newline, or ``user0001 x`` failing, would be told as another
  user's failure);
- a user's jail: ``src/LOGIN`` is not, does not hold and does not lie in
  a directory of IVLE's own (the jail template and its build directory,
  ``${src}/__base__`` by default): the tool empties ``src/LOGIN`` but for
  ``home/LOGIN``, so a login ``__base__`` would empty the template every
  jail is made from.

Anything else is refused before any program runs: one line naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from ..errors import MaintError
from ..mountinfo import is_at_or_below
from .text import shown

NAME_MAX = 255  # bytes in one file name (Linux)
SHOWN = 80  # characters of a refused name shown
NODE_NAME_MAX = 253  # characters of a node's name: a host name's (its default)


def why_not_a_node_name(name: str) -> str | None:
    """Why NAME is no node's name as the cluster table's gate takes one
    ([node] name, as every node writes it in its row), or None."""
    if not 0 < len(name) <= NODE_NAME_MAX:
        return f"is empty or longer than {NODE_NAME_MAX} characters"
    if not name.isprintable() or any(c.isspace() for c in name):
        return "holds a space, a control or an invisible character"
    return None


# An init script's or an Apache site's name as Debian's tools take it:
# invoke-rc.d, update-rc.d and a2ensite refuse less, but a name outside
# this set is a typo or a path, and the name becomes a file name in the
# directories it is looked up in (init.d, /run, systemd's unit directory;
# sites-available, sites-enabled) besides an argument of those tools.
_TOOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@-]{0,199}")
_TOOL_NAME_RULE = ("a letter or digit, then at most 199 letters, digits and '_.+@-' "
                   "(no '/', space, wildcard or option)")


def why_not_a_service_name(name: str) -> str | None:
    """Why NAME ([services] web or usrmgt) is no init script's name, or None."""
    if name.endswith(".service"):
        return ("is a systemd unit's name: give the init script's name "
                f"('{name.removesuffix('.service')}'); ivle-maint adds '.service' for systemctl")
    if not _TOOL_NAME.fullmatch(name):
        return f"is no init script's name: {_TOOL_NAME_RULE}"
    return None


def why_not_a_site_name(name: str) -> str | None:
    """Why NAME ([web] sites, with or without '.conf') is no Apache site's
    name as a2ensite takes one and names sites-enabled/NAME.conf, or None."""
    if not _TOOL_NAME.fullmatch(name.removesuffix(".conf")):
        return f"is no Apache site's name: {_TOOL_NAME_RULE}"
    return None


def why_not_plain(name: str) -> str | None:
    """Why NAME is no plain name, or None when it is one."""
    if name in ("", ".", ".."):
        return "is no file name"
    if "/" in name or "\0" in name:
        return "holds '/' or NUL"
    if name.startswith("-"):
        return "starts with '-' (a program would read it as an option)"
    if not name.isprintable():
        return "holds a control or invisible character"
    if " " in name or ":" in name:
        return "holds a space or ':' (the tool's failure line would name another login)"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"is longer than {NAME_MAX} bytes"
    return None


def why_not_a_jail(name: str, src: str | os.PathLike[str],
                   not_users: Iterable[str | os.PathLike[str]]) -> str | None:
    """Why SRC/NAME (a plain name) is no user's jail: it is, holds or lies in
    one of NOT_USERS (symlinks resolved); or None."""
    jail = os.path.realpath(os.path.join(src, name))
    for other in not_users:
        if os.fspath(other) in ("", "."):  # unset ([[jails]] template_build = ''): none
            continue
        real = os.path.realpath(other)
        if is_at_or_below(jail, real) or is_at_or_below(real, jail):
            return f"names IVLE's own directory {shown(os.fspath(other), SHOWN)}, no user's jail"
    return None


def plain_login(login: str, where: str, *, src: str | os.PathLike[str] | None = None,
                not_users: Iterable[str | os.PathLike[str]] = ()) -> str:
    """LOGIN when it is a plain name (and, given SRC, SRC/LOGIN no directory
    of NOT_USERS'); else a one-line MaintError (WHERE: its source)."""
    why = why_not_plain(login)
    if why is None and src is not None:
        why = why_not_a_jail(login, src, not_users)
    if why is not None:
        raise MaintError(f"{where} holds the login '{shown(login, SHOWN)}', which {why}; "
                         "refused, nothing run (rename or remove that user first)")
    return login
