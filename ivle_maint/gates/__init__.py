"""The gates: one module per danger, and every code path goes through it.

ivle-maint runs as root, inside dpkg, on machines where students run their
own code.  Each danger has exactly one place that decides it; code that
signals, prints, reads, runs, rewrites, connects or waits calls the gate
instead of checking beside it.  Each module's docstring states its rule.

    processes     who may be signalled: kernel facts (root, cwd, mount
                  namespace, uid), never a name or a command line
    text          text from outside made safe for a terminal, log or journal
    names         a login used as a file name and an argument: one plain name
    trusted       whether a file may be read, or a program run, as root
    mounted       no tree handed to rm, cp or a jail tool with a mount in it
    rewrite       atomic replacement that keeps owner, mode, ACLs, xattrs
    environment   the clean environment of every child and libpq session
    waits         every wait bounded, told, and interruptible
    web           one GET of a gated URL, the whole exchange bounded
    clock         durations and ordering that survive a wall clock jump
    root          root required, said in one line

The preflight (preflight.py) is the gate of the after-phase: it proves,
with the site still up, what the postinst will need; the schema hold
(gates/schema_hold.py) keeps new code off an old schema wherever a web
server can start.
"""
