"""The package version, in a module of its own (layer L0, no imports).

``nas.__version__`` reads it, and so does provenance when the package runs from a source tree
without installed metadata, without importing the package's top layers.
"""

#: The energy-nas version (kept equal to ``project.version`` in pyproject.toml).
VERSION = "0.1.0"
