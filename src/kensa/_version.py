"""kensa's version: written only here; pyproject.toml reads it via [tool.setuptools.dynamic]."""

__version__ = "0.1.0"
