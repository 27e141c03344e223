"""The end-to-end driver, run inside the throwaway chroot by scripts/e2e/run.

    /srv/e2e/inside.py SCENARIO
    /srv/e2e/inside.py node-init | node ACTION ROLE NAME PORT   (cluster nodes)

SCENARIO: lifecycle, upgrade, failed-migration, failed-preinst, reinstall
or cluster (a master and three slaves, each with its own root, mount and
PID namespaces, sharing the master's jail tree, upgraded by apt-get at
once in a random order; the logs must show no slave's web server started
before the master's user jails and usrmgt restart were done).

It runs as PID 1 of a private PID, mount and network namespace: it reaps
orphans (daemons, killed consoles) so nothing lingers as a zombie, and
when it exits the kernel ends every process left in the namespace.

The chroot is Debian bookworm with PostgreSQL; /srv/e2e holds the
ivle-maint .deb, the stand-in `ivle` packages (pool/), this file and the
sandbox helpers it reuses (ivle_sandbox/, pure Python).  The
chroot owns its /usr/sbin/policy-rc.d (allow everything) and a
/usr/sbin/runlevel that answers "N 2", so invoke-rc.d runs init scripts
for real.  Every check prints "PASS <what>" as it passes; the first
failure prints "FAIL <what>: <detail>" and exits 1.
"""
