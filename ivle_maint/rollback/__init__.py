"""Rolling a bad release back: the database restored from its dump and swapped in by name."""
