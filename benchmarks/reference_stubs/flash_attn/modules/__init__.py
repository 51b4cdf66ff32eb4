"""STUB of ``flash_attn.modules`` for the reference benchmark."""
