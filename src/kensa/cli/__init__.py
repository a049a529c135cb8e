"""The kensa command line: `kensa check|remediate|history|rollback|recover|audit|demo|report|keygen|verify|evidence`."""

from kensa.cli.main import main, run

__all__ = ["main", "run"]
