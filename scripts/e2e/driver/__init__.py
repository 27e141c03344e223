"""The end-to-end driver: the package behind scripts/e2e/inside.py, which
runs it inside the throwaway chroot (its docstring says how, and what the
scenarios check).

Modules: config (the settings), harness (the PASS/FAIL lines), node (one
node), scenarios (the single-node scenarios) and cluster (the cluster).
"""
