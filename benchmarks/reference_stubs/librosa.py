"""STUB of ``librosa``: empty (noise-file perturbation only, not run)."""
