"""Sample IVLE releases for the demo, procedure tests and benchmarks.

Each release is the set of migration files it ships (written for this
project in IVLE's styles: own BEGIN/COMMIT, none, $$ bodies, E'' strings).
1.0's migrations are already reflected in the sandbox schema, so an
upgrade from 1.0 must baseline them; 1.1 adds new ones.
"""

from __future__ import annotations

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
    "20100201-02.sql": (
        "CREATE FUNCTION login_label(l login) RETURNS text AS $$\n"
        "BEGIN\n"
        "    RETURN l.login || E'\\t' || coalesce(l.fullname, '');  -- a ; inside the body\n"
        "END;\n"
        "$$ LANGUAGE plpgsql;\n"
    ),
    "20100215.sql": "CREATE TABLE upgrade_audit (id serial PRIMARY KEY, note text);\n",
}

RELEASES = {"1.0": OLD, "1.1": {**OLD, **NEW}}


def many(count: int) -> dict[str, str]:
    """COUNT small new migrations (benchmarks), each in IVLE's own-BEGIN style."""
    assert count <= 56, "two a day within one month"
    return {
        f"201101{1 + i // 2:02d}-{1 + i % 2:02d}.sql": (
            f"BEGIN;\nCREATE TABLE bench_{i} (id serial PRIMARY KEY, v text);\n"
            f"INSERT INTO bench_{i} (v) SELECT 'row;' || g FROM generate_series(1, 50) g;\n"
            "COMMIT;\n"
        )
        for i in range(count)
    }
