"""Use cases: what llamarock does for a request, independent of the wire."""
