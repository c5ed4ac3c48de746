"""Builder of the embedded demo corpus (a developer tool; see __main__.py)."""
