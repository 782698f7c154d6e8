"""The Kubernetes runtime: a desired workload rendered into manifests (`render`, pure)
and applied to a cluster with server-side apply."""
