"""STUB of ``sox`` (data preparation only, not run)."""


class Transformer:
    """Not available in the stub."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("sox stub: no Transformer")
