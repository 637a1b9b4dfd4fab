"""Pure-Python twins of the compiled modules in ``aiokprod._native`` (same names, same signatures)."""
