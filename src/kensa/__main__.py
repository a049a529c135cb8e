from kensa.cli.main import run

run()
