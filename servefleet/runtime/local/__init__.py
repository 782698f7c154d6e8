"""The local runtime: replica processes on this machine (`supervisor`) behind an
HTTP gateway (`gateway`), so a laptop is a region like any cluster."""
