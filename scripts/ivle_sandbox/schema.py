"""An IVLE-like database: schema, template database and users.

The schema is built once into a template database; every fresh database
is then a CREATE DATABASE ... TEMPLATE copy (tens of milliseconds), with
its users inserted by one INSERT ... SELECT.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

TEMPLATE_DB = "ivle_sandbox_template"
FIRST_UNIXID = 5000  # the users' unixids follow it; see claim_unixids()
UNIXID_SLOTS = 40  # ranges claim_unixids() may give, UNIXID_STRIDE apart
UNIXID_STRIDE = 100_000
UNIXID_LOCKS = "/run/ivle-sandbox-unixids"
_claimed: int | None = None  # the descriptor holding our range's lock
claimed_slot: int | None = None  # which range: postgres.free_port() takes its ports from it too


def claim_unixids() -> int:
    """Give this process a range of unixids no other running process that
    called this uses (a test process: each pytest-xdist worker, a second
    test run beside the first), so a process of one node's user is never
    another's: a test counting or signalling processes by uid sees its
    own.  The range is held by an flock on a file in UNIXID_LOCKS until
    the process ends.  Returns the new FIRST_UNIXID (5000 for the first).
    """
    global FIRST_UNIXID, _claimed, claimed_slot
    if _claimed is not None:
        return FIRST_UNIXID
    os.makedirs(UNIXID_LOCKS, mode=0o700, exist_ok=True)
    for slot in range(UNIXID_SLOTS):
        fd = os.open(f"{UNIXID_LOCKS}/{slot}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _claimed, claimed_slot, FIRST_UNIXID = fd, slot, 5000 + slot * UNIXID_STRIDE
        return FIRST_UNIXID
    raise RuntimeError(f"all {UNIXID_SLOTS} unixid ranges in use ({UNIXID_LOCKS})")

# Modelled on the shape of IVLE's userdb (login, subject, offering,
# enrolment); written for the sandbox, not copied.
SCHEMA_SQL = """
CREATE TABLE login (
    loginid     SERIAL PRIMARY KEY,
    login       VARCHAR UNIQUE NOT NULL,
    unixid      INT UNIQUE NOT NULL,
    state       VARCHAR NOT NULL DEFAULT 'no_agreement'
                CHECK (state IN ('no_agreement', 'pending', 'enabled', 'disabled')),
    admin       BOOLEAN NOT NULL DEFAULT false,
    passhash    VARCHAR,
    nick        VARCHAR NOT NULL,
    fullname    VARCHAR NOT NULL,
    email       VARCHAR,
    studentid   VARCHAR,
    last_login  TIMESTAMP,
    acct_exp    TIMESTAMP,
    pass_exp    TIMESTAMP,
    svn_pass    VARCHAR
);
CREATE TABLE subject (
    subjectid       SERIAL PRIMARY KEY,
    subj_code       VARCHAR UNIQUE NOT NULL,
    subj_name       VARCHAR NOT NULL,
    subj_short_name VARCHAR UNIQUE NOT NULL
);
CREATE TABLE offering (
    offeringid  SERIAL PRIMARY KEY,
    subject     INT NOT NULL REFERENCES subject (subjectid),
    year        VARCHAR(4) NOT NULL,
    semester    VARCHAR(1) NOT NULL,
    UNIQUE (subject, year, semester)
);
CREATE TABLE enrolment (
    loginid     INT NOT NULL REFERENCES login (loginid) ON DELETE CASCADE,
    offeringid  INT NOT NULL REFERENCES offering (offeringid),
    role        VARCHAR NOT NULL DEFAULT 'student'
                CHECK (role IN ('student', 'tutor', 'lecturer')),
    active      BOOLEAN NOT NULL DEFAULT true,
    PRIMARY KEY (loginid, offeringid)
);
INSERT INTO subject (subj_code, subj_name, subj_short_name)
    VALUES ('COMP10001', 'Foundations of Computing', 'comp1');
INSERT INTO offering (subject, year, semester) VALUES (1, '2009', '1');
"""

_USERS_SQL = """
INSERT INTO login (login, unixid, state, admin, nick, fullname, email, studentid, passhash)
SELECT format('user%%s', lpad(i::text, greatest(4, length(i::text)), '0')),
       %(first)s + i, 'enabled', i = 1,
       format('Student %%s', i), format('Student Number %%s', i),
       format('user%%s@example.edu', i), (100000 + i)::text, md5(i::text)
FROM generate_series(%(start)s, %(stop)s) AS i;
INSERT INTO enrolment (loginid, offeringid)
SELECT loginid, 1 FROM login WHERE unixid > %(first)s + %(start)s - 1;
"""


@dataclass(frozen=True)
class User:
    login: str
    unixid: int


def login_name(i: int) -> str:
    return f"user{i:04d}"


def _admin(pg: Any) -> Any:
    conn = pg.connect("postgres")
    conn.autocommit = True
    return conn


def ensure_template(pg: Any) -> None:
    """Create the template database once per server."""
    conn = _admin(pg)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [TEMPLATE_DB])
            if cur.fetchone():
                return
            owner = sql.Identifier(pg.ivle_user)
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(TEMPLATE_DB), owner)
            )
    finally:
        conn.close()
    create_schema(pg.connect(TEMPLATE_DB, pg.ivle_user))
    conn = _admin(pg)
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER DATABASE " + TEMPLATE_DB + " IS_TEMPLATE true")
    finally:
        conn.close()


def create_schema(conn: Any) -> None:
    """Create IVLE's tables over a connection as the owner-to-be; closes it."""
    try:
        with conn, conn.cursor() as cur:
            cur.execute(SCHEMA_SQL)
    finally:
        conn.close()


def create_database(pg: Any, name: str, users: int = 0) -> list[User]:
    """A fresh IVLE database (dropped first if present) with N users."""
    ensure_template(pg)
    conn = _admin(pg)
    try:
        with conn.cursor() as cur:
            ident = sql.Identifier(name)
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    ident, sql.Identifier(TEMPLATE_DB), sql.Identifier(pg.ivle_user)
                )
            )
    finally:
        conn.close()
    return add_users(pg, name, users) if users else []


def add_users(pg: Any, dbname: str, count: int) -> list[User]:
    """Append count users after the highest existing one."""
    conn = pg.connect(dbname, pg.ivle_user)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(unixid), %s) FROM login", [FIRST_UNIXID])
            start = cur.fetchone()[0] - FIRST_UNIXID + 1
            stop = start + count - 1
            cur.execute(_USERS_SQL, {"first": FIRST_UNIXID, "start": start, "stop": stop})
        return [User(login_name(i), FIRST_UNIXID + i) for i in range(start, stop + 1)]
    finally:
        conn.close()


def list_users(pg: Any, dbname: str) -> list[User]:
    conn = pg.connect(dbname, pg.ivle_user)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT login, unixid FROM login ORDER BY unixid")
            return [User(login, unixid) for login, unixid in cur.fetchall()]
    finally:
        conn.close()


def delete_user(pg: Any, dbname: str, login: str) -> None:
    conn = pg.connect(dbname, pg.ivle_user)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM login WHERE login = %s", [login])
            if cur.rowcount != 1:
                raise LookupError(f"no user {login} in {dbname}")
    finally:
        conn.close()


def drop_database(pg: Any, name: str) -> None:
    conn = _admin(pg)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        conn.close()
