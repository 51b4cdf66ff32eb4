"""From-scratch CTC baselines that plug into the finetuning recipe.

``CRDNNCTC`` is SpeechBrain's own from-scratch CTC acoustic model, as in
its ASR CTC templates and recipes (TIMIT CTC, LibriSpeech CRDNN): Fbank
features, input normalisation, ``speechbrain.lobes.models.CRDNN.CRDNN``
(CNN blocks pooling frequency, max-pooling time, a bidirectional RNN, DNN
blocks) and a linear output layer. It has the interface of
``s3l_plugin.ctc.S3LCTC`` (a ``features`` module, an ``encoder`` and a
``head``, ``forward(feats, feat_lens) -> (logits, lengths)``; the
encoder's ``min_input_frames``, ``min_input_seconds``, ``output_lengths``
and ``config["n_mels"]``), so the finetuning recipe trains and tests it
unchanged: the experiment ``experiments/ssl_vs_scratch`` compares it with
the pretrained S3L model.

Authors
 * S3L contributors 2025
"""

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.CRDNN import CRDNN
from speechbrain.nnet.RNN import LSTM
from speechbrain.processing.features import InputNormalization
from torch import nn

from s3l_plugin.lengths import relative_to_absolute, zero_padding


class FbankFeatures(nn.Module):
    """SpeechBrain's ``Fbank`` with absolute frame counts.

    The STFT is centred (``n_fft // 2`` zeros each side), so a waveform of
    ``S`` samples gives ``1 + S // hop`` frames; frames past an
    utterance's end are 0.

    Arguments
    ---------
    sample_rate : int
        Sampling rate of the waveforms, in Hz.
    n_mels : int
        Mel filters.
    n_fft : int
        FFT size (even).
    win_length : float
        Window length in ms.
    hop_length : float
        Hop between frames in ms.

    Example
    -------
    >>> features = FbankFeatures()
    >>> feats, feat_lens = features(torch.randn(2, 16000),
    ...                             torch.tensor([1.0, 0.5]))
    >>> feats.shape, feat_lens.tolist()
    (torch.Size([2, 101, 40]), [101, 51])
    >>> bool((feats[1, 51:] == 0).all())
    True
    """

    def __init__(
        self,
        sample_rate=16000,
        n_mels=40,
        n_fft=400,
        win_length=25,
        hop_length=10,
    ):
        super().__init__()
        if n_fft % 2:
            raise ValueError(f"n_fft must be even, got {n_fft}")
        self.fbank = Fbank(
            sample_rate=sample_rate,
            n_mels=n_mels,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
        )
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        # In samples, as SpeechBrain's STFT rounds it.
        self.hop_length = self.fbank.compute_STFT.hop_length

    def num_frames(self, num_samples):
        """Frames of a centred STFT of ``num_samples`` samples.

        Arguments
        ---------
        num_samples : torch.Tensor or int
            Sample counts.

        Returns
        -------
        torch.Tensor
            Long frame counts.

        Example
        -------
        >>> FbankFeatures().num_frames(torch.tensor([16000, 159, 160]))
        tensor([101,   1,   2])
        """
        return 1 + torch.as_tensor(num_samples).long() // self.hop_length

    def forward(self, wavs, wav_lens=None):
        """Features of a padded batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) waveforms.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths in (0, 1]; None means all full.

        Returns
        -------
        feats : torch.Tensor
            (B, T, n_mels) log-mel features, 0 past each utterance's end.
        feat_lens : torch.Tensor
            (B,) long valid frames.
        """
        batch_size, max_samples = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch_size, device=wavs.device)
        num_samples = relative_to_absolute(wav_lens, max_samples)
        feat_lens = self.num_frames(num_samples.clamp(1, max_samples))
        feats = self.fbank(wavs.float())
        return zero_padding(feats, feat_lens), feat_lens.to(wavs.device)


class CRDNNEncoder(nn.Module):
    """Per-utterance normalisation, then SpeechBrain's ``CRDNN``.

    ``InputNormalization(norm_type="sentence")`` standardises each mel
    channel over the utterance's valid frames: stateless, so checkpoints
    need nothing beyond the ``state_dict`` (the "global" statistics are
    not in it). The RNN is an LSTM (SpeechBrain's LibriSpeech CRDNN; the
    default LiGRU is several times slower on CPU). As in SpeechBrain's
    recipes the CRDNN runs over the padded batch: bucketed batches keep
    the padding short.

    Arguments
    ---------
    n_mels : int
        Mel filters of the Fbank features.
    sample_rate : int
        Sampling rate of the waveforms, in Hz.
    cnn_blocks : int
        CNN blocks, each halving the frequency axis.
    cnn_channels : list of int
        Channels of each CNN block.
    time_pooling_size : int
        Max-pooling over time before the RNN (1: none); 2 gives 20 ms
        output frames.
    rnn_layers : int
        RNN layers.
    rnn_neurons : int
        Units per RNN layer and direction.
    rnn_bidirectional : bool
        Bidirectional RNN.
    dnn_blocks : int
        Linear blocks after the RNN.
    dnn_neurons : int
        Units of each linear block.
    dropout : float
        Dropout of the CNN, RNN and DNN blocks.
    rnn_class : type
        SpeechBrain RNN class.

    Example
    -------
    >>> encoder = CRDNNEncoder(cnn_channels=[4, 8], rnn_neurons=8,
    ...                        dnn_neurons=8)
    >>> feats, feat_lens = encoder.features(torch.randn(2, 3200),
    ...                                     torch.tensor([1.0, 0.5]))
    >>> x, lengths = encoder(feats, feat_lens)
    >>> x.shape, lengths.tolist(), encoder.output_dim
    (torch.Size([2, 10, 8]), [10, 5], 8)
    """

    def __init__(
        self,
        n_mels=40,
        sample_rate=16000,
        cnn_blocks=2,
        cnn_channels=(16, 32),
        time_pooling_size=2,
        rnn_layers=2,
        rnn_neurons=160,
        rnn_bidirectional=True,
        dnn_blocks=1,
        dnn_neurons=256,
        dropout=0.15,
        rnn_class=LSTM,
    ):
        super().__init__()
        if time_pooling_size < 1:
            raise ValueError(
                f"time_pooling_size must be >= 1, got {time_pooling_size}"
            )
        self.features = FbankFeatures(sample_rate=sample_rate, n_mels=n_mels)
        self.config = {"n_mels": n_mels, "time_pooling_size": time_pooling_size}
        self.normalize = InputNormalization(norm_type="sentence")
        self.time_pooling_size = time_pooling_size
        self.crdnn = CRDNN(
            input_size=n_mels,
            activation=nn.LeakyReLU,
            dropout=dropout,
            cnn_blocks=cnn_blocks,
            cnn_channels=list(cnn_channels),
            inter_layer_pooling_size=[2] * cnn_blocks,
            time_pooling=time_pooling_size > 1,
            time_pooling_size=time_pooling_size,
            rnn_class=rnn_class,
            rnn_layers=rnn_layers,
            rnn_neurons=rnn_neurons,
            rnn_bidirectional=rnn_bidirectional,
            dnn_blocks=dnn_blocks,
            dnn_neurons=dnn_neurons,
        )
        if dnn_blocks > 0:
            self.output_dim = dnn_neurons
        else:
            self.output_dim = rnn_neurons * (2 if rnn_bidirectional else 1)

    @property
    def min_input_frames(self):
        """Fewest feature frames giving one output frame."""
        return self.time_pooling_size

    @property
    def min_input_seconds(self):
        """Shortest waveform, in seconds, giving one output frame."""
        samples = (self.min_input_frames - 1) * self.features.hop_length
        return samples / self.features.sample_rate

    def output_lengths(self, feat_lens):
        """Output frames for ``feat_lens`` feature frames.

        Arguments
        ---------
        feat_lens : torch.Tensor
            (B,) long feature frame counts.

        Returns
        -------
        torch.Tensor
            (B,) long output frame counts (pooling drops a last odd frame).

        Example
        -------
        >>> encoder = CRDNNEncoder(cnn_channels=[4, 8], rnn_neurons=8)
        >>> encoder.output_lengths(torch.tensor([101, 2, 1]))
        tensor([50,  1,  0])
        """
        return feat_lens.long() // self.time_pooling_size

    def forward(self, feats, feat_lens):
        """Encodes features.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features (possibly SpecAugmented).
        feat_lens : torch.Tensor
            (B,) long valid frames.

        Returns
        -------
        x : torch.Tensor
            (B, T // time_pooling_size, output_dim) frames.
        lengths : torch.Tensor
            (B,) long valid output frames.
        """
        feat_lens = feat_lens.to(feats.device).long()
        relative = feat_lens.float() / feats.shape[1]
        feats = zero_padding(self.normalize(feats, relative), feat_lens)
        x = self.crdnn(feats)
        lengths = self.output_lengths(feat_lens)
        return zero_padding(x, lengths), lengths


class CRDNNCTC(nn.Module):
    """SpeechBrain's CRDNN CTC model with ``S3LCTC``'s interface.

    ``features`` computes the model's input from waveforms (the recipe
    calls it, then SpecAugment, then the model); ``encoder`` holds every
    parameter but the output layer ``head`` (the recipe gives each its
    optimizer).

    Arguments
    ---------
    encoder : CRDNNEncoder
        Normalisation and CRDNN.
    head : s3l_plugin.ctc.LinearCTCHead
        Output layer; its ``input_dim`` is ``encoder.output_dim``.

    Example
    -------
    >>> encoder = CRDNNEncoder(cnn_channels=[4, 8], rnn_neurons=8,
    ...                        dnn_neurons=8)
    >>> from s3l_plugin.ctc import LinearCTCHead
    >>> head = LinearCTCHead(8, upsample=1, vocab_size=5, dropout=0.0)
    >>> model = CRDNNCTC(encoder, head)
    >>> feats, feat_lens = model.features(torch.randn(2, 3200),
    ...                                   torch.tensor([1.0, 0.5]))
    >>> logits, lengths = model(feats, feat_lens)
    >>> logits.shape, lengths.tolist()
    (torch.Size([2, 10, 5]), [10, 5])
    """

    def __init__(self, encoder, head):
        super().__init__()
        self.encoder = encoder
        self.head = head

    @property
    def features(self):
        """The waveform -> (features, lengths) module."""
        return self.encoder.features

    def forward(self, feats, feat_lens):
        """CTC logits for every output frame.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features.
        feat_lens : torch.Tensor
            (B,) long valid feature frames.

        Returns
        -------
        logits : torch.Tensor
            (B, T_out, vocab_size) linear logits.
        lengths : torch.Tensor
            (B,) long valid output frames.
        """
        return self.head(*self.encoder(feats, feat_lens))
