"""STUB of ``pytorch_lightning.loggers`` (import only)."""


class TensorBoardLogger:
    """Not available in the stub."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("pytorch_lightning stub: no logger")
