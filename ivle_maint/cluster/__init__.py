"""Upgrading one master and many slaves safely, in any order.

The nodes share nothing but IVLE's PostgreSQL database, so that is where
they coordinate; there is no daemon.  Each node writes its own row in
``ivle_maint_nodes`` (table.py) as its journal advances (presence.py), and
reads the others' rows and the migration marker when it must wait
(waits.py).  The slaves also agree there on one media version (media.py)
and, for a release that rolls, on one decision and at most [cluster]
roll_batch of them out of the pool at once (roll.py).
What a row may be trusted to say (an idle "down" is not; who may be
forgotten; one master) is decided in trust.py, and whether the ivle-maint
a row names still runs by ivle_maint/liveness.py.

The nodes share one jail tree too: IVLE's data directory (the jail
template and every user's jail) lives on the master and is exported to
the slaves over NFS.  The rule, for every order in which the nodes'
upgrades may run:

1. A slave takes its web server down in its before-phase (dpkg's preinst),
   before its code changes, stops its consoles and unmounts its jails,
   then records its count of jail mounts and consoles (0 and 0).
   Nothing waits there.
2. The master's after-phase migrates only once no other node's web server
   serves code older than the target (every slave is down or already new),
   unless told to ([cluster] migrate_while_serving, --migrate-while-serving).
   Its jail template and user jails rebuilds go ahead only once every
   other web node has recorded 0 jail mounts and 0 consoles (same flag).
   Each waits up to [cluster] slaves_timeout, then fails with nothing
   changed, naming the slaves and the resume command.
3. A slave's after-phase starts its web server on the new code only once
   the marker lists every migration its own package ships and the master
   has finished its migrations, jail template, user jails and usrmgt
   restart for the same version.  It waits up to [cluster]
   master_timeout, then fails with its web server down (safe: no new code
   on an old schema or a half-rebuilt jail tree), naming what is missing
   and the resume command.  A master already ahead of it (newer
   migrations, a newer version) is refused at once.

So: rule 1 never waits, rule 2 waits only for rule 1 on the slaves, rule 3
only for rule 2 on the master; the waits form no cycle.  Whenever the
nodes' upgrades overlap in time (all started together, by hand or by
unattended apt, in any interleaving) every node ends on the new version
with every web server up.  Strictly one node after the other, each
node's apt run holds its own after-phase back from the next node's
before-phase, and the bounded waits end the cycle:

- slaves first: each slave's postinst waits, then fails with its web
  server down; the master then migrates and rebuilds the jails at once
  (every slave is down, its jails released);
  ``dpkg --configure -a`` on each slave then brings it up;
- master first: the master's postinst waits, then fails without
  migrating (the slaves keep serving the old code on the old schema);
  upgrade the slaves (each waits, then fails, down), ``dpkg --configure
  -a`` on the master, then on each slave.  Or set migrate_while_serving on
  the master for a serial master-first run: the old code briefly runs on
  the new schema and jail tree, and every slave then upgrades without waiting.

The playbook (scripts/ansible/upgrade-cluster.yml) avoids all of this by
splitting the phases across machines: every slave's before-phase first
(``ivle-maint cluster prepare``), then the master, then the slaves.
"""
