"""The one compiled part: `phiml_native._stream` (streaming-store row gathers). Everything else is in pyproject.toml.

The extension is optional: where it does not build (no C compiler), the install goes on and `phiml_native.gather`
uses `np.take` instead.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension('phiml_native._stream', ['phiml_native/_stream.c'], optional=True)])
