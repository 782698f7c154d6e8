"""Entry point for `python -m servefleet.demo`; everything lives in `server`."""

from servefleet.demo.server import main

main()
