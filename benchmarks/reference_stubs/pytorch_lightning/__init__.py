"""STUB of ``pytorch_lightning`` for the reference benchmark.

The benchmark plays the trainer: it calls the module's step under
autocast, runs backward, the optimizer and scheduler steps, and advances
``global_step`` as Lightning does after each optimizer step.
"""

from torch import nn


class LightningModule(nn.Module):
    """A plain ``nn.Module`` with the attributes a training step reads."""

    global_step = 0
    current_epoch = 0
    stub_optimizers = None  # set by the benchmark

    def log(self, *args, **kwargs):
        """No-op (Lightning's metric logging)."""

    def optimizers(self):
        """The optimizer the benchmark steps."""
        return self.stub_optimizers


class Trainer:
    """Not available in the stub."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("pytorch_lightning stub: no Trainer")
