"""Rolling back a bad release: what a restore point keeps, and giving it back."""
