"""The pool: a slave's answer to the balancer in front of the slaves, and
the balancer's view of it.

- answer.py: the answer file under [paths] state ('ready VERSION', or
  absent: drain) and the Apache configuration that serves it at
  /.ivle-maint/pool;
- haproxy.py: HAProxy's runtime API (its stats socket): one bounded
  exchange, its untrusted answer parsed into a server's state;
- watch.py: the bounded wait until HAProxy sees this server drained or up;
- readiness.py: before 'ready', IVLE's own page asked through this slave's
  web server until it serves, with ivle.conf's media version;
- switch.py: drain and ready, each in its order.

The settings are [pool]'s (config.py); `ivle-maint pool` drives them.
"""
