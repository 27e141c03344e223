"""A throwaway IVLE node for tests and demos: PostgreSQL, jails, services.

Modules (import what you need; this package imports nothing itself so the
crash watchdog, ``python -m ivle_sandbox.reaper``, starts fast):

- postgres: ThrowawayPostgres, make_sandbox_root
- schema: the IVLE-like schema, template database, users
- node: build_node, Node, install_version
- mountns: the private-mount-namespace guard and mount helpers
- procs, reaper: finding and killing sandbox processes, crash cleanup
"""
