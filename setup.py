"""Wires the optional C extension kensa._audit; metadata lives in pyproject.toml.

How the extension is built, and what KENSA_BUILD_EXTENSION chooses: csrc/optional_build.py.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc"))
from optional_build import extension_options  # noqa: E402
from setuptools import setup  # noqa: E402

setup(**extension_options())
