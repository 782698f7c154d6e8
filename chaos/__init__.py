"""Fault injection: real fleets on loopback, one fault each, the invariants checked
and what a user saw reported as one table (`python -m chaos`, see chaos/README.md)."""
