"""The transaction engine: capture -> apply -> validate -> commit or roll back,
with an audit record at every phase boundary, and recovery of interrupted runs."""

from kensa.engine.run import Engine, Registry, default_engine

__all__ = ["Engine", "Registry", "default_engine"]
