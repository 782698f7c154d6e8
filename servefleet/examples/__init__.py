"""Example inference servers that run real models as servefleet replicas."""
