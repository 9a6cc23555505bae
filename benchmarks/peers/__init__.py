"""Peers: the service against what a clinic's engineer would deploy instead (BentoML, PyTriton)
and against a bare ASGI floor, each from its own pinned venv. See :mod:`benchmarks.peers.suite`."""
