"""The kensa command line: `kensa check|remediate|history|rollback|recover|audit|demo|report|keygen|verify|evidence`."""

from kensa.cli.main import main

__all__ = ["main"]
