"""servefleet's own HTTP/1.1 client: kept-alive connections, answers parsed by llhttp.

Used by the local gateway toward its replicas (and the global entry toward the
regions) and by the Kubernetes runtime for its applies: `pool` (the connections
kept per upstream server, a request and its answer) over `connection` (one
connection: llhttp under an asyncio `Protocol`), with header fields as raw bytes
(`fields`). It knows nothing else of servefleet.
"""
