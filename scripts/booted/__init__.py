"""Booted Debian nodes for ivle-maint's tests: real systemd as PID 1.

tree.py builds (once, cached) a bookworm tree with systemd, apache2 with
mod_python, PostgreSQL 15 and the python3 libraries; node.py boots nodes
from it with systemd-nspawn --volatile=overlay and runs commands inside;
standin.py builds the stand-in IVLE package with dpkg-buildpackage;
probe.py is the client that watches a site during an upgrade.
The facts they rely on: a node boots with `systemd-nspawn --boot
--register=no --keep-unit --volatile=overlay` (no machined here, so nspawn
uses the cgroups the launching shell moved itself into, and every write
goes to a tmpfs); commands run through `nsenter` into the guest's PID 1;
inside, `invoke-rc.d` hands over to `systemctl`.  What the tests prove, and
what a run costs, is in doc/developing.md ("Booted nodes").
"""
