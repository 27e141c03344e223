"""Upgrading one master and many slaves safely, in any order.

The nodes share nothing but IVLE's PostgreSQL database, so that is where
they coordinate; there is no daemon.  Each node writes its own row in
``ivle_maint_nodes`` (table.py) as its journal advances (presence.py), and
reads the others' rows and the migration marker when it must wait
(waits.py).  The slaves also agree there on one media version (media.py).

The rule, for every order in which the nodes' upgrades may run:

1. A slave takes its web server down in its before-phase (dpkg's preinst),
   before its code changes.  Nothing waits there.
2. The master's after-phase migrates only once no other node's web server
   serves code older than the target (every slave is down or already new),
   unless told to ([cluster] migrate_while_serving, --migrate-while-serving).
   It waits up to [cluster] slaves_timeout, then fails without migrating,
   naming the slaves and the resume command.
3. A slave's after-phase starts its web server on the new code only once
   the marker lists every migration its own package ships.  It waits up
   to [cluster] master_timeout, then fails with its web server down (safe:
   no new code on an old schema), naming what is missing and the resume
   command.

So: rule 1 never waits, rule 2 waits only for rule 1 on the slaves, rule 3
only for rule 2 on the master; the waits form no cycle.  Whenever the
nodes' upgrades overlap in time (all started together, by hand or by
unattended apt, in any interleaving) every node ends on the new version
with every web server up.  Strictly one node after the other, each
node's apt run holds its own after-phase back from the next node's
before-phase, and the bounded waits end the cycle:

- slaves first: each slave's postinst waits, then fails with its web
  server down; the master then migrates at once (every slave is down);
  ``dpkg --configure -a`` on each slave then brings it up;
- master first: the master's postinst waits, then fails without
  migrating (the slaves keep serving the old code on the old schema);
  upgrade the slaves (each waits, then fails, down), ``dpkg --configure
  -a`` on the master, then on each slave.  Or set migrate_while_serving on
  the master for a serial master-first run: the old code briefly runs on
  the new schema, and every slave then upgrades without waiting.

The playbook (scripts/ansible/upgrade-cluster.yml) avoids all of this by
splitting the phases across machines: every slave's before-phase first
(``ivle-maint cluster prepare``), then the master, then the slaves.
"""
