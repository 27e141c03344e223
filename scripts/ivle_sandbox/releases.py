"""Sample IVLE releases for the demo, procedure tests and benchmarks.

Each release is the set of migration files it ships (written for this
project in IVLE's styles: own BEGIN/COMMIT, none, $$ bodies, E'' strings).
1.0's migrations are already reflected in the sandbox schema, so an
upgrade from 1.0 must baseline them; 1.1 adds new ones.
"""

from __future__ import annotations

from datetime import date, timedelta

OLD = {
    "20090105.sql": "BEGIN;\nCOMMENT ON TABLE login IS 'IVLE users';\nCOMMIT;\n",
    "20090212-01.sql": (
        "-- Nicknames are optional.\nALTER TABLE login ALTER COLUMN nick DROP NOT NULL;\n"
    ),
}

NEW = {
    "20100201-01.sql": (
        "BEGIN;\n"
        "-- Remember when each user last saw the upgrade notice; 'x;y' stays one string.\n"
        "ALTER TABLE login ADD COLUMN upgrade_notice text DEFAULT 'x;y';\n"
        "COMMIT;\n"
    ),
    # A trigger function: one the old code cannot call by name, so 1.1 stays
    # additive (any other new function may overload one it calls).
    "20100201-02.sql": (
        "CREATE FUNCTION login_label() RETURNS trigger AS $$\n"
        "BEGIN\n"
        "    NEW.upgrade_notice := NEW.login || E'\\t' || coalesce(NEW.fullname, '');  "
        "-- a ; inside the body\n"
        "    RETURN NEW;\n"
        "END;\n"
        "$$ LANGUAGE plpgsql;\n"
    ),
    "20100215.sql": "CREATE TABLE upgrade_audit (id serial PRIMARY KEY, note text);\n",
}

RELEASES = {"1.0": OLD, "1.1": {**OLD, **NEW}}

# A migration that changes rows the old code reads: with it, 1.1 is
# destructive (a rollback then restores the database: the rollback tests).
DESTRUCTIVE = {"20100301.sql": "UPDATE login SET nick = upper(nick);\n"}


def many(count: int) -> dict[str, str]:
    """COUNT small new migrations (benchmarks), two a day from 2011-01-01.

    They cycle through IVLE's styles: own BEGIN/COMMIT, no transaction
    statements, a $$-quoted function body, an E'' string with a ';'.
    """
    first = date(2011, 1, 1)
    files = {}
    for i in range(count):
        day = (first + timedelta(days=i // 2)).strftime("%Y%m%d")
        files[f"{day}-{1 + i % 2:02d}.sql"] = _STYLES[i % len(_STYLES)].format(i=i)
    return files


_STYLES = (
    "BEGIN;\nCREATE TABLE bench_{i} (id serial PRIMARY KEY, v text);\n"
    "INSERT INTO bench_{i} (v) SELECT 'row;' || g FROM generate_series(1, 50) g;\n"
    "COMMIT;\n",
    "-- No transaction statements: the runner supplies one.\n"
    "CREATE TABLE bench_{i} (id serial PRIMARY KEY, v text DEFAULT 'a;b');\n"
    "CREATE INDEX bench_{i}_v ON bench_{i} (v);\n",
    "BEGIN;\nCREATE TABLE bench_{i} (id serial PRIMARY KEY, v text);\n"
    "CREATE FUNCTION bench_{i}_label(n integer) RETURNS text AS $$\n"
    "BEGIN\n    RETURN 'n=' || n || ';';  -- a ; inside the body\nEND;\n"
    "$$ LANGUAGE plpgsql;\nCOMMIT;\n",
    "CREATE TABLE bench_{i} (id serial PRIMARY KEY, v text);\n"
    "INSERT INTO bench_{i} (v) VALUES (E'tab\\there; newline\\n');\n",
)
