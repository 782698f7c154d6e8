"""Models: a versioned model store (a local directory or S3) with a manifest per
version, and staging a version into a replica's directory, verified.

`store` holds the store, `staging` the copying, `manifest` what both agree on;
`python -m servefleet.stage` is the staging command. This package knows nothing
of endpoints, stores of records or runtimes.
"""
