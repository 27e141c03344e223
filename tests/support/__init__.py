"""What the test folders share: plain modules (not fixtures), imported as
``support.X`` (setup.cfg's pytest ``pythonpath`` puts tests/, scripts/ and
the repository on sys.path; no conftest edits it).

    upgrade_helpers  whole upgrades on sandbox nodes, as dpkg and people run them
    cluster_helpers  upgrades of a sandbox cluster: orders, rows, checks
    migration_site   a fresh IVLE database and settings per migration test
    db_site          a baselined IVLE database with its settings (abuse cases)
    abuse_helpers    error and resume lines, kills, "nothing done" (abuse cases)
    source_tree      an IVLE source tree for `ivle-maint upgrade --source`
    preinst_manifest dh_ivle_maint's manifest and the preinst that reads it
    dh_addon         a small IVLE-like package built with dh_ivle_maint
"""
