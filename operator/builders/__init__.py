"""Pure builders: a typed spec in, one Kubernetes manifest (a plain dict) out. No I/O.

Ownership is not set here: the reconcile step adopts each child (`kopf.adopt`) so the builders
stay testable without a parent object.
"""
