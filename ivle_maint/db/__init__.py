"""The database side of IVLE upgrades: migrations, their marker, backups.

Modules, bottom up:

- sqlsplit: split a migration file into statements (a small tokenizer);
- discovery: find ``YYYYMMDD-NN.sql`` files, order them, check who may
  write them;
- classify: decide how a file runs (wrapped in ivle-maint's transaction,
  its own BEGIN/COMMIT stripped, or opted out of transactions);
- migration_class: what running it does to the old code and the site
  (additive, locking, destructive), from pglast's parse tree;
- connect: connect from ivle.conf or as the postgres system user, waiting
  for a restarting server;
- marker: the ``ivle_maint_migrations`` table that records what ran;
- lock: the advisory lock that keeps two runners apart;
- backup: pg_dump before the first pending migration, with rotation;
- session: a connection for one call, optionally holding the lock;
- status: the marker compared with the shipped files (all `db status`
  loads: no classifying, applying or backing up);
- plan: what would block, each pending file classified;
- apply: one migration and its marker row, in one transaction.

On top, migrations puts these together into the public API (status,
apply, baseline, backup) that the steps, the hooks and the CLI call.

Only sqlsplit, discovery, classify and migration_class are pure; none imports psycopg2
at module level, so importing this package stays cheap.
"""
