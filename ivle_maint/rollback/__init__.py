"""Rolling a bad release back to its restore point (doc/operations.md, "Rolling back")."""
