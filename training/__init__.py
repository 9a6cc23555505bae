"""Training recipe for the project's own HAM10000 classifier (needs the `conversion` extra)."""
