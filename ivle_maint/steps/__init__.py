"""The steps of the upgrade procedure: each idempotent, each checks its own result."""
