"""IVLE's services (the web server, usrmgt-server): their init scripts and
the maintenance page the web server answers with while a slave is upgraded.

- init_scripts: stop, start and restart through invoke-rc.d, systemctl or the
  init script, each proven by a status check;
- maintenance_page: Apache's 503 answer in place of IVLE's sites;
- outcome: an action's results as a step's Outcome.
"""
