from servefleet.cli.main import run

run()
