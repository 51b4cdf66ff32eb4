"""STUB of ``pytorch_lightning.callbacks`` (import only)."""


class Callback:
    """Base class the reference's callbacks derive from (never run)."""
