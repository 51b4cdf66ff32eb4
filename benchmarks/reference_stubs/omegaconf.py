"""STUB of ``omegaconf``: only ``MISSING`` (dataclass defaults)."""

MISSING = "???"
