"""STUB of ``flash_attn`` for the reference benchmark (see README.md)."""
