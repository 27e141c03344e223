"""IVLE's user jails: their mounts, the template they are built from, and
rebuilding each user's jail.

- mounts: unmount every jail below the jail mounts directory, proven by
  the kernel's mount table;
- template: ``ivle-buildjail -u`` and the check of the template it leaves,
  and the run-with-heartbeat helpers IVLE's jail tools share;
- users: ``ivle-remakeuser -a`` and its per-user failures.

Where the jails are (ivle.conf's paths, checked) is ivle_maint/jaildir.py,
which the consoles package uses too.
"""
