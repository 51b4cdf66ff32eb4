"""The student's predictor: maps projected frames to the teacher's targets.

Three 'same'-padded Conv1d layers (256 channels; kernels 5, 5, 1; no bias)
with LayerNorm, ReLU and dropout between them (METHOD.md 3). The last layer is
linear: the reference's ReLU there clipped every negative target
coordinate (METHOD.md 7.4).

Authors
 * S3L contributors 2025
"""

from torch import nn

from s3l_plugin.conv import ConvStack


class Predictor(nn.Module):
    """Convolutional predictor with a linear last layer.

    Arguments
    ---------
    input_dim : int
        Input channels (the encoder's projection size).
    channels : sequence of int
        Output channels of each layer.
    kernels : sequence of int
        Kernel size of each layer ('same' padding, stride 1).
    dropout : float
        Dropout after each hidden layer's ReLU.
    conv_impl : str
        ``"auto"``, ``"fft"`` or ``"direct"`` (``s3l_plugin.runtime``).

    Example
    -------
    >>> import torch
    >>> predictor = Predictor(16, (16, 16), (5, 1))
    >>> y = predictor(torch.randn(2, 7, 16), torch.tensor([7, 4]))
    >>> y.shape, bool((y[1, 4:] == 0).all())
    (torch.Size([2, 7, 16]), True)
    """

    def __init__(
        self,
        input_dim=256,
        channels=(256, 256, 256),
        kernels=(5, 5, 1),
        dropout=0.1,
        conv_impl="auto",
    ):
        super().__init__()
        self.layers = ConvStack(
            input_dim,
            channels,
            kernels,
            padding="same",
            dropout=dropout,
            last_activation=False,
            conv_impl=conv_impl,
        )

    def forward(self, x, lengths):
        """Predicts the targets of each frame.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, input_dim) projected student frames.
        lengths : torch.Tensor
            (B,) long valid frames.

        Returns
        -------
        torch.Tensor
            (B, T, channels[-1]) predictions, 0 on padded frames.
        """
        predictions, _ = self.layers(x, lengths)
        return predictions
