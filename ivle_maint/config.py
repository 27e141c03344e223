"""ivle.conf as IVLE reads it, and ivle-maint's own settings file.

Both files are configobj files.  ivle-maint's settings are declared once,
in SETTINGS_SPEC below: that text is the documentation of every setting
and its default (``ivle-maint settings`` prints it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configobj import (
    ConfigObj,
    ConfigObjError,
    InterpolationError,
    Section,
    flatten_errors,
    get_extra_values,
)

from .errors import ConfigError
from .gates import names, trusted
from .gates.text import shown
from .roles import Role

try:  # configobj >= 5.1 ships validate inside the package
    from configobj.validate import (
        Validator,
        VdtValueError,
        VdtValueTooBigError,
        is_float,
        is_integer,
        is_string,
        is_string_list,
    )
except ImportError:  # Debian bookworm: a top-level module
    from validate import (
        Validator,
        VdtValueError,
        VdtValueTooBigError,
        is_float,
        is_integer,
        is_string,
        is_string_list,
    )

DEFAULT_SETTINGS_FILE = "/etc/ivle/ivle-maint.conf"
DEFAULT_IVLE_CONF_DIR = "/etc/ivle"

# The most any number of the settings (or of ivle.conf) may be, unless its
# spec says less: seconds are sent to PostgreSQL (lock_timeout,
# statement_timeout, pg_dump's --lock-wait-timeout) and given to poll() in
# milliseconds, which both hold in a C int (24.8 days); a count becomes a
# deque's length.  Past it, a value failed only where it was used: an
# upgrade's migrate or jail rebuild, with the site down.
NUMBER_MAX = 2147483

SETTINGS_SPEC = """\
# ivle-maint settings: /etc/ivle/ivle-maint.conf, or --config FILE, or
# the environment variable IVLE_MAINT_CONF.  Every key is optional; no
# number is more than 2147483 (in seconds, about 24 days), and every path
# is absolute.

[node]
# What this node is in the IVLE cluster: 'master' (PostgreSQL, user
# management server, jail template), 'slave' (Apache) or 'both'.
role = option('master', 'slave', 'both', default='both')
# This node's name in logs and in the cluster table: one word, at most
# 253 characters; empty: the hostname.
name = node_name(default='')
# What tells this machine from others of the same name in the cluster
# table; empty: /etc/machine-id.  Set it only where several nodes share
# one machine (test sandboxes).
machine_id = string(default='')

[paths]
# Directory holding ivle.conf; empty: $IVLECONF, else /etc/ivle.
ivle_conf_dir = optional_path(default='')
# IVLE's shipped database migrations (userdb/migrations in the source).
migrations = path(default='/usr/share/ivle/userdb/migrations')
# ivle-maint's journal, media version record and other state.
state = path(default='/var/lib/ivle-maint')
# Log files, one per run, with timestamps and step durations.
log = path(default='/var/log/ivle-maint')
# Database dumps taken before migrations, and ivle.conf backups.
backup = path(default='/var/backups/ivle-maint')
# The lock that keeps one ivle-maint at a time on this node.
run = path(default='/run/ivle-maint')

[logs]
# Log files kept in [paths] log: a run deletes all but the newest ones;
# the newest is left plain, the others are gzip-compressed.
keep = integer(min=1, default=20)
# Lines of an IVLE command's output (a jail build's apt, say) kept in the
# log: the first and the last this many, with a line saying how many
# were left out between them; 0 keeps the whole output.
output_lines = integer(min=0, default=100)

[services]
# Init script names of the web server (slaves) and of the user
# management server (master).
web = service_name(default='apache2')
usrmgt = service_name(default='ivle-usrmgt-server')
# How services are driven: 'auto' picks invoke-rc.d when present (as
# Debian maintainer scripts must), else systemctl, else the init script.
backend = option('auto', 'invoke-rc.d', 'systemctl', 'init.d', default='auto')
# Where init scripts live (used by the 'init.d' backend).
initd_dir = path(default='/etc/init.d')
# Seconds to wait for a service's action and for it to reach the asked state.
timeout = float(min=1, default=60)

[web]
# What clients see while this node's web server is down for an upgrade:
#   stop:        Apache is stopped, as IVLE's procedure says (connections
#                are refused until start-web);
#   maintenance: Apache keeps answering, with IVLE's sites disabled and
#                ivle-maint's maintenance configuration enabled
#                (conf-available/ivle-maint-maintenance.conf): every request
#                gets 503, Retry-After, Cache-Control: no-store and a small
#                HTML page; no IVLE code runs.  start-web restores the sites.
# Also: --during-upgrade on 'upgrade' and 'rerun', and the environment
# variable IVLE_MAINT_DURING_UPGRADE (dpkg's hooks, the Ansible playbook).
during_upgrade = option('stop', 'maintenance', default='stop')
# IVLE's Apache sites (names in sites-available), disabled with a2dissite
# in maintenance mode; only those enabled then are enabled again.
sites = site_list(default=list('ivle'))
# The page sent with the 503 (UTF-8 HTML, at most 7 KiB, no external
# assets); empty: ivle-maint's own short page.
maintenance_page = optional_path(default='')
# Retry-After seconds when this node has no completed upgrade to measure;
# otherwise the last upgrade's web-down time is told (at most a week).
retry_after = integer(min=1, max=604800, default=300)
# How Apache changes to and from the maintenance answer: 'graceful' keeps
# its listening socket open (no client refused) and waits until every old
# child, the processes that ran IVLE's code, has exited; 'full' stops and
# starts it (nothing of the old server survives; refused meanwhile).
restart = option('graceful', 'full', default='graceful')
# Apache's configuration directory (sites-available, conf-available).
apache_dir = path(default='/etc/apache2')

[commands]
# IVLE's own programs: a bare name is looked up on PATH, else an absolute
# path; the whole value is the program (no arguments), spaces and all.
mountallusers = command(default='ivle-mountallusers')
buildjail = command(default='ivle-buildjail')
remakeuser = command(default='ivle-remakeuser')
# Seconds allowed for each (0: no limit); jail builds run apt.
timeout = float(min=0, default=0)

[consoles]
# Seconds between SIGTERM and SIGKILL for console processes.
term_timeout = float(min=0, default=10)

[jails]
# Also run 'ivle-mountallusers -u' before ivle-maint's own unmount.
run_mountallusers = boolean(default=False)
# Detach busy jail mounts lazily (umount -l) instead of failing.
lazy_unmount = boolean(default=False)

[database]
# 'ivle-conf': connect with ivle.conf's [database] settings;
# 'postgres': as the postgres system user over the local socket.
connect_as = option('ivle-conf', 'postgres', default='ivle-conf')
# Socket directory for connect_as = postgres.
socket_dir = path(default='/var/run/postgresql')
# Seconds to wait for a restarting server, and for another runner's lock.
wait_timeout = float(min=0, default=120)
lock_timeout = float(min=0, default=600)
# pg_dump before applying migrations, keeping this many dumps.
backup = boolean(default=True)
backup_keep = integer(min=1, default=5)
# Every session ivle-maint opens sets these itself (sent when it connects,
# so PG* variables and ROLE or DATABASE defaults cannot change them; each
# migration starts from them again).  The schemas statements search and
# create in: plain schema names, comma-separated.
search_path = string(default='public')
# Seconds a statement waits for a lock another session holds (PostgreSQL's
# lock_timeout) before it gives up, naming the holder; 0: no limit.  A
# migration also waits at most this long for old transactions, and makes
# no try later than this after its first (ddl_lock_timeout below).
statement_lock_timeout = float(min=0, default=300)
# Seconds a statement may run (PostgreSQL's statement_timeout); 0, the
# default: no limit, since a migration may rewrite a large table (waiting
# for a lock is bounded by statement_lock_timeout).
statement_timeout = float(min=0, default=0)
# Seconds between the lines that name who holds the lock a statement waits
# for (the first comes after about a second).
tell_interval = float(min=0.5, default=5)
# A migration's statements wait at most this many seconds for a lock (each
# attempt's lock_timeout), then give way: the migration's transaction is
# rolled back (no-transaction mode: only that statement), so a busy table
# delays the migration instead of queueing every reader behind its DDL, and
# it is tried again.  0: no retries, each statement waits up to
# statement_lock_timeout as one wait.
ddl_lock_timeout = float(min=0, default=2)
# Tries after the first before the migration gives up, nothing of it
# applied; statement_lock_timeout, when set, also bounds them: no try starts
# later than that many seconds after the first.
ddl_retries = integer(min=0, default=10)
# The longest pause between two tries, in seconds: the pauses double from
# half a second up to this, each a random time between half and all of it.
ddl_retry_max_wait = float(min=0, default=30)
# A migration does not start while a transaction older than this many
# seconds holds a lock on a table it touches (every table, without
# python3-pglast): the holder is named and waited for, up to
# statement_lock_timeout.  0: no such check.
old_transaction_age = float(min=0, default=60)

[media]
# Rewrite [media] version even when ivle.conf leaves it unset.
force = boolean(default=False)

[cluster]
# Coordinate upgrades with the other nodes through IVLE's database
# (tables ivle_maint_nodes and ivle_maint_media; see doc/clusters.md):
# every node records its version and phase there, the master migrates
# only once no slave serves the old code, a slave starts its web server
# on new code only once the master applied the migrations it ships, and
# the slaves agree on one media version.
#   auto:   on for 'master' and 'slave'; a slave waits for the master
#           whenever the database knows one (a recorded master, or the
#           migration marker) or holds IVLE's tables (a master that never
#           ran ivle-maint yet); a 'both' node (single machine) stays alone.
#   always: on for every role; a slave always waits for the migrations.
#   never:  this node neither records itself nor waits.
coordinate = option('auto', 'always', 'never', default='auto')
# Seconds a slave waits for the master (its migrations, then its rebuild
# of the shared jail tree, user jails and usrmgt restart) before it fails
# (its web server stays down) with the command that resumes.  The jail
# rebuild runs apt inside the jail: allow for it.
master_timeout = float(min=0, default=1800)
# Seconds the master waits for every slave to stop serving the old code
# (before migrating), then to release its jails (no jail mounted, no
# console: before rebuilding the shared jail tree), before it fails, with
# nothing changed, with the command that resumes.
slaves_timeout = float(min=0, default=600)
# Migrate and rebuild the jails even while slaves still serve the old code
# (the old code then runs on the new schema and jails until each slave is
# upgraded).  Also: the --migrate-while-serving option of 'ivle-maint
# rerun' and 'upgrade'.
migrate_while_serving = boolean(default=False)
# yes: a web node's preinst, its before-phase done (web server down, jails
# unmounted), waits until every node in the cluster table has done its own
# for the same version before dpkg unpacks the new code; a node whose
# before-phase fails, or whose upgrade is given up, ends the wait at once on
# every slave, and each gives its site back on the old version (dpkg's
# abort), while the master (no web server: it unpacks at once) stops at its
# migrate, nothing migrated.  One slave that cannot stop leaves every slave
# on the old version.  The playbook's choice (IVLE_MAINT_UNPACK_TOGETHER=yes).
# no (apt-get upgrade on every node at once): each node unpacks once its own
# before-phase is done; a slave that cannot stop then makes the master wait
# (slaves_timeout) before it migrates.
unpack_together = boolean(default=False)
# A slave whose master is already on a newer IVLE (newer migrations, or a
# newer version in ivle_maint_nodes) refuses to start its web server: its
# code would run on a schema and jail tree it was not made for.  yes: start
# it anyway, with a warning.
serve_on_newer_schema = boolean(default=False)
# Seconds between two looks at the database while waiting, at most: a wait
# wakes as soon as another node changes its row (PostgreSQL's NOTIFY).
poll = float(min=0.05, default=2)
# Where this slave's web server answers (recorded in the cluster table):
# before migrating, the master sends one request there to each slave whose
# row says "down"; an answer other than 503 means it still serves.  Use a
# URL the master reaches; a loopback URL is checked only from this machine.
probe_url = string(default='http://127.0.0.1:80/')
# Seconds the master waits for each answer.
probe_timeout = float(min=0.1, default=3)
# Roll a release one slave at a time behind the balancer, the site up
# (doc/clusters.md, "Rolling releases"), decided once for the cluster by
# the first node whose upgrade begins and recorded in ivle_maint_rolls:
#   auto:   roll when every pending migration is additive, no jail rebuild
#           is needed, and every slave is behind a balancer ([pool]);
#           otherwise IVLE's upgrade procedure, saying why;
#   always: as auto, but a release that cannot roll is refused before
#           anything stops;
#   never:  IVLE's upgrade procedure.
# Also: the --rolling option of 'upgrade', 'rerun' and 'plan'
# (IVLE_MAINT_ROLLING under dpkg).
rolling = option('auto', 'always', 'never', default='auto')
# Slaves out of the pool at once during a roll.
roll_batch = integer(min=1, max=1000, default=1)

[pool]
# The balancer in front of the slaves (doc/clusters.md).  Each slave
# answers it at /.ivle-maint/pool through its own Apache: 'ready VERSION'
# (200) while 'ivle-maint pool ready' holds, 404 after 'ivle-maint pool
# drain' (HAProxy's http-check disable-on-404: no new sessions, requests
# in flight finish).  'none': nothing is asked of a balancer; 'haproxy':
# drain and ready also wait until HAProxy's runtime API reports the change.
balancer = option('none', 'haproxy', default='none')
# HAProxy's stats socket (a Unix socket, 'stats socket PATH level admin');
# empty: none (balancer = haproxy needs one).
haproxy_socket = optional_path(default='')
# HAProxy's backend of IVLE's slaves, and this slave's server in it
# (empty: the node's name, [node] name).
backend = string(default='ivle')
server = string(default='')
# Seconds drain and ready wait for HAProxy to see the change.
drain_timeout = float(min=0.1, default=30)
# Before 'ivle-maint pool ready' writes 'ready', it asks IVLE itself for
# this page through this slave's own web server: the slave goes back in the
# pool only once it answers 200, not ivle-maint's maintenance page, with
# ivle.conf's [media] version in its first 256 KiB (IVLE's pages link their
# static files under it; unset: not looked for).  An http(s) URL.
ready_url = string(default='http://127.0.0.1/')
# Seconds ready asks that page (every half second, each answer within what
# is left) before it fails, the pool answer left as it was.
ready_timeout = float(min=0.1, default=120)

[rollback]
# Every upgrade keeps a restore point for 'ivle-maint rollback' (the old
# package, ivle.conf, these settings, the jail template, the pre-upgrade
# dump), pinned until 'ivle-maint commit' or until this many later
# upgrades completed on this node (0: no limit) ...
commit_after_upgrades = integer(min=0, default=1)
# ... or this many days passed since its upgrade completed (0: no limit).
commit_after_days = float(min=0, default=30)
# Who a full rollback creates and renames databases as: 'postgres'
# (the postgres system user over the local socket, as IVLE's upgrade
# procedure's 'sudo -u postgres'; IVLE's own database user may not create
# databases) or 'ivle-conf' (as [database] connect_as = ivle-conf).  The
# dump is restored as ivle.conf's login, never as a superuser.
connect_as = option('ivle-conf', 'postgres', default='postgres')
# Days a full rollback keeps the database it replaced (renamed
# NAME_failed_STAMP) before a later run drops it (0: never dropped).
keep_failed_database_days = float(min=0, default=7)
"""

# The part of IVLE's own config spec that ivle-maint relies on (a port is
# one TCP takes: libpq refused another only when the preflight connected,
# in its own words, naming neither the file nor the key).
IVLE_CONF_SPEC = """\
[paths]
prefix = string(default='/usr/local')
data = string(default='/var/lib/ivle')
share = string(default='${prefix}/share/ivle')
lib = string(default='${prefix}/lib/ivle')
[[jails]]
mounts = string(default='${data}/jailmounts')
src = string(default='${data}/jails')
template = string(default='${src}/__base__')
template_build = string(default='${src}/__base_build__')

[media]
version = string(default=None)

[database]
host = string(default='localhost')
port = integer(min=1, max=65535, default=5432)
name = string(default='ivle')
username = string(default=None)
password = string(default=None)

[usrmgt]
host = string(default='localhost')
port = integer(min=1, max=65535, default=2178)
magic = string(default=None)

[jail]
suite = string(default=None)
mirror = string(default=None)
devmode = boolean(default=False)
"""


def _nearest(name: str, valid: list[str], form: str = "{}") -> str:
    import difflib  # only for a misspelt name

    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {form.format(close[0])}?)" if close else ""


def _refuse_unknown(path: Path, conf: ConfigObj) -> None:
    """A misspelt section or key is an error: configobj would ignore it."""
    for sections, name in get_extra_values(conf):
        parent: Any = conf
        for section in sections:
            parent = parent[section]
        spec = parent.configspec
        valid = list(spec.sections if spec is not None else [])
        where = "".join(f"[{s}]" for s in sections)
        if isinstance(parent[name], Section):
            raise ConfigError(f"{path}: unknown section {where}[{name}]"
                              f"{_nearest(name, valid, where + '[{}]')}")
        valid = list(spec.scalars if spec is not None else [])
        raise ConfigError(f"{path}: {where or 'top level'}: unknown key {name}"
                          f"{_nearest(name, valid)}")


def _lines(path: Path, purpose: trusted.Purpose) -> list[bytes] | None:
    """The file's lines as the gate read them (configobj never opens it);
    None when it does not exist."""
    try:
        data = trusted.read(path, purpose)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    parts = data.split(b"\n")  # as configobj's readlines(): line ends kept
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _interpolate_all(path: Path, section: Section, where: str = "") -> None:
    """Read every value once: configobj interpolates lazily, at each read,
    so a ${name} it cannot make (missing, a loop) would otherwise raise
    wherever a value is first read, long after the file was accepted."""
    for key in section.scalars:
        try:
            section[key]
        except InterpolationError as exc:
            raise ConfigError(f"{path}: {where or 'top level'} {key}: "
                              f"{str(exc).rstrip('.')}") from None
    for name in section.sections:
        _interpolate_all(path, section[name], f"{where}[{name}]")


def _load(path: Path, spec: str, *, interpolation: Any, strict: bool = False,
          purpose: trusted.Purpose = trusted.SETTINGS) -> ConfigObj:
    """Parse and validate one configobj file; one-line ConfigError on fault.

    The bytes are the gate's (gates/trusted.py): a regular file, root's,
    bounded.  strict: sections and keys the spec does not name are errors
    (ivle-maint's own settings; ivle.conf has many keys ivle-maint does not
    use).
    """
    lines = _lines(path, purpose)
    try:
        conf = ConfigObj(
            lines,
            configspec=spec.splitlines(),
            interpolation=interpolation,
            file_error=False,
            encoding="utf-8",
        )
    except ConfigObjError as exc:
        errors = getattr(exc, "errors", None) or [exc]
        first = errors[0]
        line = getattr(first, "line_number", None)
        where = f" line {line}" if line else ""
        text = str(first).split(" at line ")[0].rstrip(".")
        # Which key or section: "Duplicate keyword name" alone named neither.
        said = str(getattr(first, "line", "") or "").strip()
        if said and said not in text:
            text += f": {shown(said, 80)}"
        raise ConfigError(f"{path}{where}: {text}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    conf.filename = str(path)
    _refuse_misplaced(path, conf, conf.configspec)
    _interpolate_all(path, conf)  # the file's own values, each named when it fails
    try:
        result = conf.validate(Validator({"float": _finite_float, "integer": _bounded_integer,
                                          "path": _absolute_path,
                                          "optional_path": _optional_path,
                                          "command": _command, "node_name": _node_name,
                                          "service_name": _service_name,
                                          "site_list": _site_list}),
                               preserve_errors=True)
        _interpolate_all(path, conf)  # and the defaults the spec filled in
    except InterpolationError as exc:
        raise ConfigError(f"{path}: {str(exc).rstrip('.')}") from None
    if result is not True:
        for sections, key, error in flatten_errors(conf, result):
            name = "/".join([*sections, key or "(section)"])
            reason = error if error else "missing"
            raise ConfigError(f"{path}: [{name}]: {reason}")
    if strict:
        _refuse_unknown(path, conf)
    _refuse_unprintable(path, conf, every=strict)
    return conf


def _refuse_misplaced(path: Path, section: Section, spec: Section | None,
                      where: tuple[str, ...] = ()) -> None:
    """A section where the spec has a value is an error: configobj's
    validate() failed on it with an AttributeError (`[media]` then
    `[[version]]` in ivle.conf: a traceback wherever ivle.conf is read).
    (A value where the spec has a section, validate() names itself.)"""
    if spec is None:
        return
    for name in section.sections:
        if name in spec.scalars:
            key = "/".join([*where, name])
            raise ConfigError(f"{path}: [{key}]: a section where a value belongs "
                              f"(write {name} = VALUE in [{'/'.join(where) or 'top level'}])")
        _refuse_misplaced(path, section[name], spec[name] if name in spec.sections else None,
                          (*where, name))


def _refuse_unprintable(path: Path, conf: Section, *, every: bool = True) -> None:
    """A value holding a newline, a carriage return or any control character
    is an error: no setting needs one (a path, a name, a URL), and shown by
    `ivle-maint settings` or in a message it would read as another line (a
    multi-line ... value: "[database] connect_as = postgres").
    Not EVERY (ivle.conf, whose values IVLE reads as they are): a NUL alone,
    which no path, argument or connection parameter can hold (before, a NUL
    in ivle.conf's [paths] was a ValueError traceback wherever a path was
    used: the preflight, `consoles list`, `mounts list`)."""
    for name, value in conf.items():
        if isinstance(value, Section):
            _refuse_unprintable(path, value, every=every)
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and (not item.isprintable() if every else "\0" in item):
                where = "/".join([*_sections_of(conf), name])
                raise ConfigError(f"{path}: [{where}]: '{shown(item, 80)}' holds a character "
                                  "that is not printable (a line break, a control character)")


def _sections_of(section: Section) -> list[str]:
    names: list[str] = []
    while section.parent is not section:
        names.insert(0, section.name)
        section = section.parent
    return names


class VdtNotFinite(VdtValueError):
    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.args = (f'the value "{value}" is not a finite number.',)


class VdtAboveNumberMax(VdtValueTooBigError):
    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.args = (f'the value "{value}" is more than {NUMBER_MAX} (in seconds, about 24 '
                     "days), the most any number may be",)


def _finite_float(value: object, min: object = None, max: object = None) -> float:
    """validate's float, finite and at most NUMBER_MAX: nan passes any min
    (nan < 0 is false), and 1e400 is inf; either made a wait that never
    ends or a traceback, as 1e308 did (an OverflowError)."""
    number: float = is_float(value, min, max)
    if not math.isfinite(number):
        raise VdtNotFinite(value)
    if number > NUMBER_MAX:
        raise VdtAboveNumberMax(value)
    return number


def _bounded_integer(value: object, min: object = None, max: object = None) -> int:
    """validate's integer, at most NUMBER_MAX."""
    number: int = is_integer(value, min, max)
    if number > NUMBER_MAX:
        raise VdtAboveNumberMax(value)
    return number


class VdtNotAbsolute(VdtValueError):
    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.args = (f"'{shown(str(value), 200)}' is not an absolute path: the directory "
                     "ivle-maint is started in would decide what it names (dpkg starts it "
                     "in /); write it from /",)


def _absolute_path(value: object) -> str:
    """A path setting: absolute, so that every run, from any directory (a
    hook run by dpkg, a rerun from root's home, systemd's hold check),
    names the same file.  Before, a relative [paths] state kept an
    upgrade's journal where the run started, and a run from elsewhere found
    none: `services start web` went around the schema hold."""
    text = is_string(value)
    if not text.startswith("/"):
        raise VdtNotAbsolute(value)
    return text


def _optional_path(value: object) -> str:
    """An absolute path, or empty (the setting's documented default)."""
    text = is_string(value)
    return text and _absolute_path(text)


class VdtNoNodeName(VdtValueError):
    def __init__(self, value: str, why: str) -> None:
        super().__init__(value)
        self.args = (f"'{shown(value, 80)}' {why}: no node of the cluster table may be "
                     "named so",)


def _node_name(value: object) -> str:
    """[node] name: empty (the hostname), or a name the cluster table's gate
    takes (gates/names.why_not_a_node_name).  Before, `web 1` was taken, and
    the node's own row was refused by every reader: the master took it for a
    node serving old code, and waited for it until slaves_timeout."""
    text = is_string(value)
    # A control character is refused with every other setting's (_refuse_unprintable).
    why = names.why_not_a_node_name(text) if text and text.isprintable() else None
    if why:
        raise VdtNoNodeName(text, why)
    return text


class VdtRefusedName(VdtValueError):
    """A name the names gate refused: WHY, the whole of its one line."""

    def __init__(self, value: object, why: str) -> None:
        super().__init__(value)
        self.args = (why,)


def _service_name(value: object) -> str:
    """[services] web and usrmgt: an init script's name (gates/names).  Before,
    any text was taken: 'apache2.service' put the schema hold's drop-in in
    apache2.service.service.d, where systemd never looks, and '../x' ran a
    program outside the init script directory."""
    text = is_string(value)
    # A control character is refused with every other setting's (_refuse_unprintable).
    why = names.why_not_a_service_name(text) if text.isprintable() else None
    if why:
        raise VdtRefusedName(text, f"'{shown(text, 80)}' {why}")
    return text


def _site_list(value: object, *args: Any, **kwargs: Any) -> list[str]:
    """[web] sites: at least one Apache site's name (gates/names), each
    given to a2dissite and a2ensite and made sites-enabled/NAME.conf.
    Before, any list was taken: empty, it named no site of IVLE's, so the
    schema hold let Apache start mid-upgrade with IVLE's site enabled and
    maintenance mode disabled nothing; `-h` went to a2dissite as an option."""
    given = is_string_list(value, *args, **kwargs)
    if not given:
        raise VdtRefusedName(value, "names no site: give IVLE's Apache sites "
                                "(sites-available names), e.g. 'ivle'")
    for name in given:
        why = names.why_not_a_site_name(name) if name.isprintable() else None
        if why:
            raise VdtRefusedName(value, f"'{shown(name, 80)}' {why}")
    return [str(name) for name in given]


class VdtEmptyCommand(VdtValueError):
    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.args = ("is empty: name a program (a name on PATH, or an absolute path)",)


def _command(value: object) -> str:
    """A [commands] program: a bare name (looked up on PATH) or an absolute
    path, taken whole wherever it is used.  Before, the preflight checked
    the value whole while the jail steps split it as a shell would: a path
    with a space passed the preflight, then the jail rebuild ran another
    program (or none) after the migrations, with the site down."""
    text = is_string(value)
    if not text.strip():
        raise VdtEmptyCommand(value)
    return _absolute_path(text) if "/" in text else text


@dataclass(frozen=True)
class IvleConf:
    """IVLE's ivle.conf, read with IVLE's defaults and ${} interpolation."""

    path: Path
    conf: ConfigObj

    @property
    def jail_mounts(self) -> Path:
        return Path(self.conf["paths"]["jails"]["mounts"])

    @property
    def jail_src(self) -> Path:
        return Path(self.conf["paths"]["jails"]["src"])

    @property
    def jail_template(self) -> Path:
        return Path(self.conf["paths"]["jails"]["template"])

    @property
    def share(self) -> Path:
        return Path(self.conf["paths"]["share"])

    @property
    def media_version(self) -> str | None:
        value: str | None = self.conf["media"]["version"]
        return value

    @property
    def database(self) -> dict[str, Any]:
        return dict(self.conf["database"])


def given_path(value: str | None, given_as: str) -> Path | None:
    """A path whoever started ivle-maint gave (--config FILE, $IVLE_MAINT_CONF,
    $IVLECONF), made absolute against their working directory: rollback's
    dpkg runs the hooks from /, a restore point keeps the settings' path,
    a resume line is pasted elsewhere.  None when not given; an empty one
    is refused (IVLE reads $IVLECONF='' as the working directory, ivle-maint
    would have read the default: two different files), and so is one holding
    a character that is not printable."""
    if value is None:
        return None
    if not value:
        raise ConfigError(f"{given_as} is empty: unset it, or name a file or directory")
    if not value.isprintable():
        # Printed as it is by `ivle-maint settings` (and in every resume line's
        # --config): a line break there forged lines ("[database]",
        # "connect_as = postgres"); bytes not UTF-8 were a traceback.
        raise ConfigError(f"{given_as} {shown(value, 80)} holds a character that is not "
                          "printable (a line break, a control character, a byte not UTF-8)")
    return Path(os.path.abspath(value))


def ivle_conf_dir(settings_dir: str = "") -> Path:
    """IVLE's config directory: the setting, else $IVLECONF, else /etc/ivle."""
    if settings_dir:
        return Path(settings_dir)
    return given_path(os.environ.get("IVLECONF"), "$IVLECONF") or Path(DEFAULT_IVLE_CONF_DIR)


def load_ivle_conf(conf_dir: Path) -> IvleConf:
    """Read ivle.conf the way IVLE does: template interpolation, defaults."""
    path = conf_dir / "ivle.conf"
    if not path.exists():
        raise ConfigError(f"{path}: no such file (set IVLECONF or [paths] ivle_conf_dir)")
    return IvleConf(path, _load(path, IVLE_CONF_SPEC, interpolation="template",
                                purpose=trusted.IVLE_CONF))


@dataclass(frozen=True)
class Settings:
    """ivle-maint's own settings, validated against SETTINGS_SPEC."""

    path: Path
    conf: ConfigObj

    def __getitem__(self, section: str) -> Any:
        return self.conf[section]

    @property
    def role(self) -> Role:
        return Role(self.conf["node"]["role"])

    @property
    def node_name(self) -> str:
        # uname's nodename is gethostname(2)'s answer, without importing socket
        # (db status loads only what it reads: tests/support/import_budget.py).
        return str(self.conf["node"]["name"] or os.uname().nodename)

    def path_of(self, key: str) -> Path:
        """A directory from [paths] (state, log, backup, run, migrations)."""
        return Path(self.conf["paths"][key])

    @property
    def ivle_conf_dir(self) -> Path:
        return ivle_conf_dir(self.conf["paths"]["ivle_conf_dir"])

    def ivle_conf(self) -> IvleConf:
        return load_ivle_conf(self.ivle_conf_dir)


def _given_settings_file(explicit: str | None) -> Path | None:
    """--config FILE, else $IVLE_MAINT_CONF (given_path), else None."""
    if explicit is not None:
        return given_path(explicit, "--config")
    return given_path(os.environ.get("IVLE_MAINT_CONF"), "$IVLE_MAINT_CONF")


def settings_file(explicit: str | None = None) -> Path:
    """--config FILE, else $IVLE_MAINT_CONF, else the default location."""
    return _given_settings_file(explicit) or Path(DEFAULT_SETTINGS_FILE)


def load_settings(explicit: str | None = None) -> Settings:
    """Load the settings; a missing default file means all defaults."""
    given = _given_settings_file(explicit)
    path = given or Path(DEFAULT_SETTINGS_FILE)
    if given is not None and not path.exists():
        raise ConfigError(f"{path}: no such file")
    settings = Settings(path, _load(path, SETTINGS_SPEC, interpolation=False, strict=True))
    ivle_conf_dir(settings.conf["paths"]["ivle_conf_dir"])  # $IVLECONF checked now
    return settings
