"""Builds aiokprod's compiled hot path.

Every ``aiokprod/_native/*.pyx`` becomes an extension module of the same name. The pure-Python twins in
``aiokprod/_python`` are used when the extensions are missing or ``AIOKPROD_NO_EXTENSIONS=1`` is set.
"""
import glob
import os

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError as exc:  # Cython is a build requirement in pyproject.toml
    raise SystemExit("building aiokprod needs Cython>=3.0 (pip install cython)") from exc


def native_extensions():
    sources = sorted(glob.glob(os.path.join("aiokprod", "_native", "*.pyx")))
    extensions = []
    for source in sources:
        module = source[: -len(".pyx")].replace(os.sep, ".")
        extensions.append(
            Extension(
                module,
                [source],
                # Warnings on, so the compiled code stays clean; the unused-function noise is Cython's own.
                extra_compile_args=["-O2", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"],
            )
        )
    return cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )


setup(ext_modules=native_extensions())
