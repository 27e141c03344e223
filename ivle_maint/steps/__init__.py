"""The steps of the upgrade procedure, one module each: each idempotent,
each checks its own result.  Only ivle_maint.procedure imports them; the
work they do lives in the library packages (db, services, consoles,
jails, media)."""
