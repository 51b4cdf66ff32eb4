"""STUB of ``pandas``: empty (noise-file perturbation only, not run)."""
