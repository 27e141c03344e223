"""The database side of IVLE upgrades: migrations, their marker, backups.

Modules, bottom up:

- sqlsplit: split a migration file into statements (a small tokenizer);
- discovery: find ``YYYYMMDD-NN.sql`` files, order them, check who may
  write them;
- classify: decide how a file runs (wrapped in ivle-maint's transaction,
  its own BEGIN/COMMIT stripped, or opted out of transactions);
- connect: connect from ivle.conf or as the postgres system user, waiting
  for a restarting server;
- marker: the ``ivle_maint_migrations`` table that records what ran;
- lock: the advisory lock that keeps two runners apart;
- backup: pg_dump before the first pending migration, with rotation.

Only sqlsplit, discovery and classify are pure; the rest import psycopg2
inside their functions, so importing this package stays cheap.
"""
