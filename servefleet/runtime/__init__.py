"""Runtimes: what makes a region run a `plan.Workload` (local processes, Kubernetes)."""
