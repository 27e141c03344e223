"""A throwaway IVLE node for tests and demos: PostgreSQL, jails, services.

Modules (import what you need; this package imports nothing itself so the
crash watchdog, ``python -m ivle_sandbox.reaper``, starts fast):

- postgres: ThrowawayPostgres, make_sandbox_root
- schema: the IVLE-like schema, template database, users
- node: build_node, Node, install_version
- mountns: the private-mount-namespace guard and mount helpers
- procs, reaper: finding and killing sandbox processes, crash cleanup
- bench: what the benchmark scripts share (options, root, ivle-maint runs)

Cleanup guarantees: every process the sandbox starts carries
IVLE_SANDBOX=<root> in its environment, so teardown finds it whatever its
uid or parent.  If the owner dies without tearing down (even by SIGKILL),
a reaper process per server and per node notices (EOF on a pipe) and
stops PostgreSQL, kills, unmounts and removes.  Mounts never outlive the
mount namespace they were made in.  For the strongest guarantee run the
owner as PID 1 of its own PID namespace (unshare -m -p -f --kill-child,
as scripts/demo-node does): the kernel then kills everything with it.
"""
