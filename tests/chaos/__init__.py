"""Chaos and hostile-input tests: a bank app under killed frontends, crashed databases,
contention and malformed requests (docs/RELIABILITY.md).

``python -m tests.chaos --long`` runs the long chaos run on demand; the short one runs
in the normal suite (marker ``chaos``).
"""
