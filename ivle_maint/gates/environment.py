"""The environment of every child process and every libpq session.

Rule: nothing ivle-maint inherits from whoever started it decides what a
child runs, where a database connection goes or which schema a statement
writes to.  Every child gets ``child_env()``: a fixed PATH (SBIN_PATH), the
C.UTF-8 locale, HOME of the user it runs as, the few inherited names listed
in PASS_THROUGH (each with why), and what ivle-maint itself sets (SET_BY_US);
every other name (PG*, LC_*, LANG, LD_*, PYTHON*, IFS, BASH_ENV, ENV, CDPATH,
...) is dropped.  Children start with the umask UMASK.

libpq reads PG* variables (PGHOST, PGOPTIONS, PGSERVICE, PGSSLMODE, PGTZ,
...), ~/.pgpass and pg_service.conf even when every keyword is given, and an
empty keyword counts as not given.  So ``pin_process()``, run once at
start-up, removes every PG* variable from ivle-maint's own environment (no
service file is then read: none is named), and ``libpq_keywords()`` adds to
each connection a passfile that cannot exist and the session's own settings
in the startup packet (``options``): search_path, lock_timeout and
statement_timeout from [database] (ROLE or DATABASE defaults are overridden
too, and RESET ALL / DISCARD ALL return to them).
"""

from __future__ import annotations

import locale
import os
import re
from collections.abc import Mapping

from ..errors import UsageError
from .text import shown

# Maintainer scripts run with a PATH that has the sbin directories; a
# person's shell may not, and an inherited PATH may lead anywhere.
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOCALE = "C.UTF-8"
UMASK = 0o022

# Fixed for every child whatever was inherited.
FIXED: dict[str, str] = {"PATH": SBIN_PATH, "LANG": LOCALE, "LC_ALL": LOCALE}

# Inherited names a child still gets, and why.
PASS_THROUGH: dict[str, str] = {
    # dpkg's maintainer-script environment: invoke-rc.d, update-rc.d,
    # deb-systemd-invoke and IVLE's own scripts read these to know that
    # they run inside dpkg and on which root.
    "DPKG_MAINTSCRIPT_NAME": "dpkg: which maintainer script runs",
    "DPKG_MAINTSCRIPT_PACKAGE": "dpkg: the package being configured",
    "DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT": "dpkg: multi-arch instances",
    "DPKG_MAINTSCRIPT_ARCH": "dpkg: the package's architecture",
    "DPKG_MAINTSCRIPT_DEBUG": "dpkg: debug output of maintainer scripts",
    "DPKG_RUNNING_VERSION": "dpkg: its version",
    "DPKG_ROOT": "dpkg: the root being installed (invoke-rc.d, policy-rc.d)",
    "DPKG_ADMINDIR": "dpkg: its database directory (dpkg-query)",
    "DPKG_FORCE": "dpkg: the --force options in effect",
    # sysvinit's rc gives these to what it runs; runlevel(8), which
    # invoke-rc.d asks whether a start is wanted, answers from them.
    "RUNLEVEL": "the runlevel sysvinit's rc runs in (runlevel(8), invoke-rc.d)",
    "PREVLEVEL": "the runlevel before it (runlevel(8))",
    # apt inside the jail build (ivle-buildjail) must not prompt.
    "DEBIAN_FRONTEND": "apt/debconf in the jail build: no prompt",
    # The jail build downloads packages; apt checks their signatures.
    "http_proxy": "the jail build's downloads",
    "https_proxy": "the jail build's downloads",
    "no_proxy": "the jail build's downloads",
}

# Names ivle-maint itself may set for one child (the env= of a run).
SET_BY_US: dict[str, str] = {
    "IVLECONF": "IVLE's own commands must read the ivle.conf ivle-maint reads",
    "PGPASSWORD": "pg_dump's password: never argv, never a file (db.backup)",
    "PGPASSFILE": "pg_dump reads no ~/.pgpass: the password is ours or none (NO_PASSFILE)",
    # ivle-maint rollback runs dpkg, whose maintainer scripts run ivle-maint again:
    "IVLE_MAINT_CONF": "the hooks read the settings this run read",
    "IVLE_MAINT_ACCEPT_DATA_LOSS": "rollback --accept-data-loss, for dpkg's hooks",
    "IVLE_MAINT_ROLLBACK_PID": "the rollback's hooks may take the node lock (lock.py)",
    "DEBIAN_FRONTEND": "dpkg and apt-get run by rollback ask nothing (noninteractive)",
    "PYTHONPATH": "the postinst's warm worker loads this ivle_maint, nothing else (warm.py)",
    # MARK: a random value of each recorded command, inherited by what it forks.
    "IVLE_MAINT_COMMAND": "proves a dead run's leftover is its command's (gates/processes.py)",
}

# The name of the mark each recorded command carries (children.record).
MARK = "IVLE_MAINT_COMMAND"

# Read by ivle-maint itself from its own environment: kept by pin_process()
# (and passed on to no child unless listed above).
OWN: dict[str, str] = {
    "IVLECONF": "the directory of ivle.conf, as IVLE reads it",
    "IVLE_MAINT_CONF": "ivle-maint's settings file",
    "IVLE_MAINT_DURING_UPGRADE": "[web] during_upgrade for dpkg's hooks",
    "IVLE_MAINT_ACCEPT_CLASS": "--accept-class for dpkg's hooks",
    "IVLE_MAINT_UNPACK_TOGETHER": "[cluster] unpack_together for dpkg's hooks",
    "IVLE_MAINT_ROLLING": "[cluster] rolling for dpkg's hooks",
    "IVLE_MAINT_ACCEPT_DATA_LOSS": "rollback --accept-data-loss for dpkg's hooks",
    "IVLE_MAINT_ROLLBACK_PID": "the rollback whose dpkg runs this hook (lock.py)",
    "IVLE_MAINT_FULL_PROCEDURE": "IVLE's whole procedure, whatever the release needs",
    "SUDO_USER": "who accepted a migration's class, for its marker row",
    "LOGNAME": "who accepted a migration's class, without sudo",
    "TERM": "whether the terminal shows progress (output.py)",
    "HOME": "the user's home, reset to root's home for children",
}

# Never read from anywhere: libpq must get its parameters from us only.
NO_PASSFILE = "/dev/null/ivle-maint-no-passfile"  # ENOTDIR: cannot exist
_SEARCH_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(,[A-Za-z_][A-Za-z0-9_$]*)*$")


def home_of(uid: int) -> str:
    """The home directory of uid (/ when it has no passwd entry)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_dir or "/"
    except KeyError:
        return "/"


def child_env(parent: Mapping[str, str], extra: Mapping[str, str] | None = None,
              *, home: str = "/root") -> dict[str, str]:
    """The whole environment of a child: FIXED, HOME, PASS_THROUGH, then extra.

    extra may only name SET_BY_US; anything else is a programming error.
    """
    env = {name: parent[name] for name in PASS_THROUGH if name in parent}
    env.update(FIXED)
    env["HOME"] = home
    for name, value in (extra or {}).items():
        if name not in SET_BY_US:
            raise ValueError(f"{name} is not an environment variable ivle-maint sets")
        env[name] = value
    return env


def process_env(parent: Mapping[str, str]) -> dict[str, str]:
    """ivle-maint's own environment after pin_process(): no PG*, fixed PATH and locale."""
    env = {name: parent[name] for name in (*PASS_THROUGH, *OWN) if name in parent}
    env.update(FIXED)
    return env


def pin_process() -> None:
    """Once at start-up: ivle-maint's own environment, locale and umask pinned."""
    clean = process_env(os.environ)
    os.environ.clear()
    os.environ.update(clean)
    os.umask(UMASK)
    try:
        locale.setlocale(locale.LC_ALL, LOCALE)
    except locale.Error:
        locale.setlocale(locale.LC_ALL, "C")


def scrub_libpq() -> None:
    """Remove every PG* variable from this process (libpq reads them at connect)."""
    for name in [n for n in os.environ if n.startswith("PG")]:
        del os.environ[name]


_YES = ("yes", "true", "1")
_NO = ("no", "false", "0")


def yes_or_no(environ: Mapping[str, str], name: str) -> bool | None:
    """The yes or no that NAME (one of OWN's IVLE_MAINT_* choices) says in
    ENVIRON; None when unset or empty (the setting or the default decides).

    The one reader of every boolean choice from the environment: each once
    read its own spelling (only "1" accepted data loss, "off" forced the
    whole procedure), so a value meant one way could be taken the other,
    silently.  Anything else is bad input, named, before anything runs."""
    value = environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in _YES or value in _NO:
        return value in _YES
    raise UsageError(f"{name} must be yes or no (or 1 or 0), not {shown(environ[name], 40)}")


def one_of(environ: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """The choice NAME (an IVLE_MAINT_* variable) says in ENVIRON, one of
    CHOICES; "" when unset or empty (the setting decides).  Anything else
    is bad input, named, before anything runs."""
    value = environ.get(name, "").strip().lower()
    if not value or value in choices:
        return value
    raise UsageError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, "
                     f"not {shown(environ[name], 40)}")


def check_search_path(value: str) -> str:
    """The search_path setting without spaces; ValueError unless plain schema names."""
    compact = "".join(value.split())
    if not _SEARCH_PATH.match(compact):
        raise ValueError(f"search_path {value!r}: give plain schema names separated by commas")
    return compact


def milliseconds(seconds: float) -> str:
    """A wait of SECONDS as PostgreSQL's timeouts take it (lock_timeout,
    statement_timeout, pg_dump's --lock-wait-timeout): 0 means no limit
    there, so a positive wait is at least 1 ms.  Before, round() made a
    wait of under half a millisecond 0: the migration waited for ever
    behind a reader, every later reader queued behind it."""
    if seconds <= 0:
        return "0"
    return str(max(1, round(seconds * 1000)))


def session_options(search_path: str, lock_timeout: float, statement_timeout: float) -> str:
    """libpq's options keyword: the session's settings in the startup packet."""
    settings = {
        "search_path": check_search_path(search_path),
        "lock_timeout": milliseconds(lock_timeout),
        "statement_timeout": milliseconds(statement_timeout),
        "idle_in_transaction_session_timeout": "0",
    }
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def libpq_keywords(options: str) -> dict[str, str]:
    """Keywords every connection adds to its own: nothing left for libpq to look up."""
    scrub_libpq()
    return {"passfile": NO_PASSFILE, "options": options, "sslmode": "prefer",
            "client_encoding": "UTF8"}
