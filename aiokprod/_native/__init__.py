"""Compiled (Cython) hot path. Each module here has a pure-Python twin in ``aiokprod._python``."""

# The twin pairs the package selects between; the test suite checks every one of them loaded natively.
MODULES = ("codec", "handle", "appender")
