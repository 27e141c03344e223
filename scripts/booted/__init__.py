"""Booted Debian nodes for ivle-maint's tests: real systemd as PID 1.

tree.py builds (once, cached) a bookworm tree with systemd, apache2 with
mod_python, PostgreSQL 15 and the python3 libraries; node.py boots nodes
from it with systemd-nspawn --volatile=overlay and runs commands inside;
standin.py builds the stand-in IVLE package with dpkg-buildpackage;
probe.py is the client that watches a site during an upgrade.
See /work/shared/SYSTEMD-NODES.md's facts in doc/developing.md ("Booted nodes").
"""
