"""The floor under `ivle-maint db status`, for bench_migrations.py.

What any Python program pays to answer the same question with the
libraries ivle-maint must use: start the interpreter, load psycopg2 and
configobj with its Validator, read ivle.conf and validate the settings
file, connect as IVLE's login (as `db status` does), SELECT the marker's
rows, checksum the migration files, print a line per row.  No gate, no
error handling, no argument parsing, no logging: nothing ivle-maint could
leave out.  Usage: python3 bare_status.py IVLE_CONF MAINT_CONF MIGRATIONS
"""

import hashlib
import os
import sys

import psycopg2
from configobj import ConfigObj

try:  # configobj 5.1 (PyPI) carries validate inside it; bookworm's is its own module
    from configobj.validate import Validator
except ImportError:
    from validate import Validator  # type: ignore[no-redef]

SELECT = ("SELECT key, filename, checksum, mode, applied_at, duration, host, "
          "class_override, class_override_by FROM ivle_maint_migrations ORDER BY key")


def main(ivle_conf: str, maint_conf: str, migrations: str) -> None:
    database = ConfigObj(ivle_conf)["database"]
    settings = ConfigObj(maint_conf, configspec=["[database]", "socket_dir = string(default='')"])
    settings.validate(Validator())
    conn = psycopg2.connect(host=database["host"], port=database["port"],
                            dbname=database["name"], user=database["username"],
                            password=database["password"])
    with conn.cursor() as cur:
        cur.execute(SELECT)
        rows = cur.fetchall()
    conn.close()
    sums = {}
    for name in os.listdir(migrations):
        with open(os.path.join(migrations, name), "rb") as file:
            sums[name] = hashlib.sha256(file.read()).hexdigest()
    print("\n".join(f"{'applied' if sums.get(row[1]) == row[2] else 'changed'} {row[0]} "
                    f"{row[4]:%Y-%m-%d %H:%M} {row[3]} {row[5] or 0:.1f}s on {row[6]}"
                    for row in rows))


if __name__ == "__main__":
    main(*sys.argv[1:4])
