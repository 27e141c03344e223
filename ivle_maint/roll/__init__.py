"""Rolling releases: one slave at a time behind the balancer, the site up.

choice.py is the rule (does this release roll, and why); decision.py
gathers its facts and records the cluster's one decision."""
