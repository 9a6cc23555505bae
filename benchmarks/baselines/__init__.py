"""Reproductions of the approaches this service replaces, served for side-by-side load tests."""
