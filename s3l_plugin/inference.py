"""SpeechBrain inference folders for trained S3L models.

The recipes write folders that SpeechBrain's own inference classes load,
from a local path or a Hugging Face repo id, with no S3L code in the
caller::

    from speechbrain.inference.ASR import EncoderASR
    from speechbrain.inference.encoders import WaveformEncoder

    asr = EncoderASR.from_hparams(source="results/ft/inference",
                                  savedir="pretrained_models/ft")
    asr.transcribe_file("utt.flac")            # "A CAT SAT"
    ssl = WaveformEncoder.from_hparams(source="results/s3l/inference",
                                       savedir="pretrained_models/s3l")
    out = ssl.encode_file("utt.flac")          # last layer, (1, T, 512)
    out = ssl.encode_batch(wavs, wav_lens)     # dict, every layer

Each folder follows the layout of SpeechBrain's pretrained models: a
``hyperparams.yaml`` whose ``modules`` hold the network, a ``pretrainer``
whose ``loadables`` are fetched as ``<source>/<name>.ckpt``, and (for ASR)
a ``tokenizer`` and a ``decoding_function``, plus a ``README.md`` model
card. The classes below are what those YAML files declare (``!new:``).

Authors
 * S3L contributors 2025
"""

import json
import os
import shutil

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    register_checkpoint_hooks,
)
from torch import nn

from s3l_plugin.ctc import CTCHead, LinearCTCHead, LSTMCTCHead, greedy_decode
from s3l_plugin.data.atomic import write_text_atomic
from s3l_plugin.distributed import unwrap_module
from s3l_plugin.pretrained import extract_features
from s3l_plugin.vocabulary import CharVocabulary, SubwordVocabulary

HPARAMS_FILE = "hyperparams.yaml"
MODEL_CARD = "README.md"


class WaveformCTC(nn.Module):
    """Waveforms -> CTC log-probabilities of an ``S3LCTC`` model.

    The ``encoder`` module of an ASR inference folder: what the finetuning
    recipe computes at test time (features, encoder, layer sum, head), with
    the exact output lengths, so that decoding ignores padding exactly as
    the recipe does.

    Arguments
    ---------
    model : s3l_plugin.ctc.S3LCTC
        The finetuned model.

    Example
    -------
    >>> from s3l_plugin.ctc import S3LCTC
    >>> from s3l_plugin.encoder import S3LEncoder, architecture
    >>> encoder = S3LEncoder(**architecture("toy", transf2_layers=2))
    >>> model = S3LCTC(encoder, LinearCTCHead(16, upsample=4, vocab_size=5))
    >>> log_probs, lengths = WaveformCTC(model).eval()(
    ...     torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> log_probs.shape, lengths.tolist()
    (torch.Size([2, 40, 5]), [40, 12])
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, wavs, wav_lens=None):
        """CTC log-probabilities and valid output frames.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) waveforms at the model's sample rate.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths; None means all full.

        Returns
        -------
        log_probs : torch.Tensor
            (B, T, vocab_size) float32 natural-log probabilities.
        lengths : torch.Tensor
            (B,) long valid frames.
        """
        feats, feat_lens = self.model.features(wavs, wav_lens)
        logits, lengths = self.model(feats, feat_lens)
        return torch.log_softmax(logits.float(), dim=-1), lengths


class WaveformLayers(nn.Module):
    """Waveforms -> every transformer layer of a pretrained S3L encoder.

    The ``encoder`` module of an encoder inference folder, for SpeechBrain's
    ``WaveformEncoder``: its ``encode_batch`` returns this module's dict and
    its ``encode_file`` the ``"embeddings"`` entry.

    Arguments
    ---------
    encoder : s3l_plugin.encoder.S3LEncoder
        The pretrained encoder.

    Example
    -------
    >>> from s3l_plugin.encoder import S3LEncoder, architecture
    >>> layers = WaveformLayers(S3LEncoder(**architecture("toy")))
    >>> out = layers(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> out["embeddings"].shape, len(out["layers"]), out["lengths"].tolist()
    (torch.Size([2, 10, 16]), 2, [10, 3])
    """

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, wavs, wav_lens=None):
        """Per-layer representations (eval mode, no gradient).

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) waveforms at the encoder's sample rate.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths; None means all full.

        Returns
        -------
        dict
            ``embeddings``: (B, T, d_model) last layer; ``lengths``: its (B,)
            valid frames; ``layers`` and ``layer_lengths``: the same for
            every transformer layer in order (the transf1 layers at twice
            the frame rate). Padded frames are 0.
        """
        layers, lengths = extract_features(self.encoder, wavs, wav_lens)
        return {
            "embeddings": layers[-1],
            "lengths": lengths[-1],
            "layers": layers,
            "layer_lengths": lengths,
        }


@register_checkpoint_hooks
class DecoderFile:
    """A data file of the decoder (lexicon, n-gram) that a Pretrainer fetches.

    A ``Pretrainer`` loadable: ``from_hparams`` fetches ``<name>.ckpt``
    from the model's source (folder or Hub repo) and hands its local path
    to :meth:`load`.

    Example
    -------
    >>> lexicon = DecoderFile()
    >>> lexicon.load("lexicon.ckpt", end_of_epoch=False)
    >>> lexicon.path
    'lexicon.ckpt'
    """

    def __init__(self):
        self.path = None

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Remembers the fetched file's local path."""
        del end_of_epoch  # a data file, not a training state
        self.path = str(path)


class FetchedLexiconBeamSearch:
    """:class:`~s3l_plugin.decoding.LexiconBeamSearch` on fetched files.

    Built on first use, once the ``Pretrainer`` has fetched the lexicon
    and the n-gram (:class:`DecoderFile`); the arguments are those of
    ``LexiconBeamSearch``, the tokens being the character vocabulary's.

    Arguments
    ---------
    lexicon : DecoderFile
        The lexicon.
    lm : DecoderFile, optional
        The n-gram (ARPA or KenLM binary); None: lexicon only.
    **options
        ``beam_size``, ``lm_weight``, ``word_score``, ``beam_threshold``,
        ``beam_size_token``.
    """

    def __init__(self, lexicon, lm=None, **options):
        self.lexicon = lexicon
        self.lm = lm
        self.options = options
        self.search = None

    def __call__(self, log_probs, lengths):
        """Word lists of a batch (see ``LexiconBeamSearch.__call__``)."""
        if self.search is None:
            from s3l_plugin.decoding import LexiconBeamSearch

            if self.lexicon.path is None:
                raise RuntimeError(
                    "The lexicon was not fetched: load the model with "
                    "from_hparams (its pretrainer fetches lexicon.ckpt)"
                )
            lm_path = None if self.lm is None else self.lm.path
            self.search = LexiconBeamSearch(
                CharVocabulary().tokens,
                self.lexicon.path,
                lm_path,
                **self.options,
            )
        return self.search(log_probs, lengths)


def decode_ctc(
    encoder_out, wav_lens=None, blank_index=0, id_offset=0, beam_search=None
):
    """Token ids of the transcriptions, for ``EncoderASR``.

    ``EncoderASR``'s ``decoding_function`` (``!name:`` in the YAML):
    greedy CTC decoding over the valid frames, or the lexicon + n-gram
    beam search, whose words are spelled back into character ids (the
    ``CTCTextEncoder`` tokenizer joins them into the text).

    Arguments
    ---------
    encoder_out : tuple
        ``(log_probs, lengths)`` from :class:`WaveformCTC`.
    wav_lens : torch.Tensor, optional
        Unused: the output lengths are exact.
    blank_index : int
        The CTC blank.
    id_offset : int
        Subtracted from every id: 1 for SentencePiece pieces (id 0 of the
        model is the blank), 0 for characters.
    beam_search : FetchedLexiconBeamSearch, optional
        The beam search; None decodes greedily.

    Returns
    -------
    list of list of int
        Token ids per utterance; for characters, words separated by one
        space and no space at either end (as the recipe's transcripts).

    Example
    -------
    >>> ids = torch.tensor([[0, 3, 1, 1, 4, 4, 0, 1]])  # " A  BB _ "
    >>> log_probs = torch.nn.functional.one_hot(ids, 29).float()
    >>> decode_ctc((log_probs, torch.tensor([8])))
    [[3, 1, 4]]
    """
    del wav_lens
    log_probs, lengths = encoder_out
    if beam_search is not None:
        vocab = CharVocabulary()
        words = beam_search(log_probs, lengths)
        return [vocab.encode(" ".join(hyp)) for hyp in words]
    hyps = greedy_decode(log_probs, lengths, blank_index)
    if id_offset:
        return [[i - id_offset for i in hyp] for hyp in hyps]
    # Characters: the separator (the space, id 1) normalised as the
    # recipe's CharVocabulary.decode does before scoring.
    space = CharVocabulary().encode("A B")[1]
    out = []
    for hyp in hyps:
        text = []
        for i in hyp:
            if i != space or (text and text[-1] != space):
                text.append(i)
        out.append(text[:-1] if text and text[-1] == space else text)
    return out


def head_yaml(head):
    """The ``!new:`` YAML lines rebuilding a CTC head (eval-time values).

    Arguments
    ---------
    head : LinearCTCHead, LSTMCTCHead or CTCHead
        The head.

    Returns
    -------
    str

    Example
    -------
    >>> print(head_yaml(LinearCTCHead(16, upsample=4, vocab_size=5)))
    !new:s3l_plugin.ctc.LinearCTCHead
        input_dim: 16
        upsample: 4
        vocab_size: 5
        dropout: 0.0
    """
    # LSTMCTCHead first: it is a LinearCTCHead after an LSTM.
    if isinstance(head, LSTMCTCHead):
        args = {
            "input_dim": head.lstm.input_size,
            "upsample": head.upsample,
            "hidden": head.lstm.hidden_size,
            "num_layers": head.lstm.num_layers,
            "vocab_size": head.vocab_size,
        }
    elif isinstance(head, LinearCTCHead):
        args = {
            "input_dim": head.output.in_features,
            "upsample": head.upsample,
            "vocab_size": head.vocab_size,
        }
    elif isinstance(head, CTCHead):
        args = {
            "input_dim": head.upsample_conv.in_channels,
            "upsample": head.upsample,
            "channels": head.channels,
            "kernel_size": head.upsample_conv.kernel_size[0],
            "num_conv": len(head.blocks),
            "vocab_size": head.vocab_size,
            "conv_impl": head.conv_impl,
        }
    else:
        raise TypeError(
            f"No inference YAML for a {type(head).__name__} head "
            "(LinearCTCHead, LSTMCTCHead and CTCHead are supported)"
        )
    args["dropout"] = 0.0
    cls = type(head)
    return _new_yaml(f"{cls.__module__}.{cls.__name__}", args, indent=4)


def _new_yaml(cls_path, args, indent):
    """``!new:cls`` then one ``key: value`` line (JSON values) per arg."""
    pad = " " * indent
    lines = [f"!new:{cls_path}"]
    lines += [f"{pad}{key}: {json.dumps(value)}" for key, value in args.items()]
    return "\n".join(lines)


def _encoder_yaml(encoder):
    """The ``!new:`` YAML of an ``S3LEncoder`` with its architecture."""
    args = dict(unwrap_module(encoder).config)
    for name in ("dropout", "attention_dropout", "activation_dropout"):
        args[name] = 0.0
    return _new_yaml("s3l_plugin.encoder.S3LEncoder", args, indent=4)


def _state_dict(module):
    """CPU copy of a module's state_dict (a DDP wrapper unwrapped)."""
    state = unwrap_module(module).state_dict()
    return {key: value.detach().cpu() for key, value in state.items()}


def _audio_normalizer_yaml(sample_rate):
    return (
        "audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer"
        f"\n    sample_rate: {int(sample_rate)}\n"
    )


ASR_HEADER = """\
# S3L CTC speech recognizer, for speechbrain.inference.ASR.EncoderASR:
#   asr = EncoderASR.from_hparams(source=<this folder or repo>, savedir=...)
#   asr.transcribe_file("utt.wav")
# Written by recipes/LibriSpeech/finetune.py; see README.md.
"""


def write_asr_folder(folder, model, vocab, beam_search=None, card=""):
    """Writes an ``EncoderASR`` inference folder for a finetuned model.

    Files: ``hyperparams.yaml``, ``asr.ckpt`` (the ``S3LCTC`` weights),
    ``tokenizer.ckpt`` (SpeechBrain's ``CTCTextEncoder`` labels, or the
    SentencePiece model), with a beam search ``lexicon.ckpt`` and
    ``lm.ckpt`` (copies of its files), and ``README.md`` (``card``).

    Arguments
    ---------
    folder : str
        Output folder (created; files in it are replaced).
    model : s3l_plugin.ctc.S3LCTC
        The model (its weights are saved as they are).
    vocab : CharVocabulary or SubwordVocabulary
        The CTC vocabulary.
    beam_search : s3l_plugin.decoding.LexiconBeamSearch, optional
        The (tuned) beam search the folder decodes with; None: greedy.
    card : str
        The model card (Markdown).

    Returns
    -------
    str
        The folder.

    Example
    -------
    >>> import tempfile
    >>> from s3l_plugin.ctc import S3LCTC
    >>> from s3l_plugin.encoder import S3LEncoder, architecture
    >>> encoder = S3LEncoder(**architecture("toy", transf2_layers=2))
    >>> model = S3LCTC(encoder, LinearCTCHead(16, upsample=4, vocab_size=29))
    >>> folder = write_asr_folder(tempfile.mkdtemp(), model, CharVocabulary())
    >>> sorted(os.listdir(folder))
    ['README.md', 'asr.ckpt', 'hyperparams.yaml', 'tokenizer.ckpt']
    """
    model = unwrap_module(model)
    os.makedirs(folder, exist_ok=True)
    torch.save(_state_dict(model), os.path.join(folder, "asr.ckpt"))
    # Pretrainer loadables: file <name>.ckpt -> YAML key.
    loadables = {"asr": "asr_model", "tokenizer": "tokenizer"}
    if isinstance(vocab, SubwordVocabulary):
        if beam_search is not None:
            raise ValueError("The lexicon beam search needs characters")
        with open(os.path.join(folder, "tokenizer.ckpt"), "wb") as out:
            out.write(vocab.processor.serialized_model_proto())
        tokenizer = "tokenizer: !new:sentencepiece.SentencePieceProcessor\n"
        id_offset = 1
    else:
        vocab.encoder.save(os.path.join(folder, "tokenizer.ckpt"))
        tokenizer = (
            "tokenizer: !new:speechbrain.dataio.encoder.CTCTextEncoder\n"
        )
        id_offset = 0
    parts = [
        ASR_HEADER,
        _audio_normalizer_yaml(model.features.sample_rate),
        f"encoder_model: {_encoder_yaml(model.encoder)}",
        f"head: {head_yaml(model.head)}",
        "asr_model: !new:s3l_plugin.ctc.S3LCTC\n"
        "    encoder: !ref <encoder_model>\n"
        "    head: !ref <head>\n"
        f"    num_layers: {model.layer_sum.num_layers}\n"
        f"    center: {model.center}\n"
        "encoder: !new:s3l_plugin.inference.WaveformCTC\n"
        "    model: !ref <asr_model>\n",
        tokenizer,
    ]
    beam = "null"
    if beam_search is not None:
        loadables["lexicon"] = "lexicon"
        shutil.copyfile(
            beam_search.lexicon_path, os.path.join(folder, "lexicon.ckpt")
        )
        parts.append("lexicon: !new:s3l_plugin.inference.DecoderFile\n")
        options = {
            "beam_size": beam_search.beam_size,
            "lm_weight": beam_search.lm_weight,
            "word_score": beam_search.word_score,
            "beam_threshold": beam_search.beam_threshold,
            "beam_size_token": beam_search.beam_size_token,
        }
        lm = ""
        if beam_search.lm_path is not None:
            loadables["lm"] = "lm"
            shutil.copyfile(
                beam_search.lm_path, os.path.join(folder, "lm.ckpt")
            )
            parts.append("lm: !new:s3l_plugin.inference.DecoderFile\n")
            lm = "\n    lm: !ref <lm>"
        parts.append(
            "# The lexicon + n-gram beam search the recipe tested with "
            "(null: greedy)\n"
            "beam_search: "
            + _new_yaml(
                "s3l_plugin.inference.FetchedLexiconBeamSearch",
                options,
                indent=4,
            )
            + "\n    lexicon: !ref <lexicon>"
            + lm
            + "\n"
        )
        beam = "!ref <beam_search>"
    parts.append(
        "decoding_function: !name:s3l_plugin.inference.decode_ctc\n"
        f"    blank_index: {vocab.blank_index}\n"
        f"    id_offset: {id_offset}\n"
        f"    beam_search: {beam}\n"
        "modules:\n"
        "    encoder: !ref <encoder>\n"
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
        "    loadables:\n"
        + "".join(
            f"        {name}: !ref <{key}>\n" for name, key in loadables.items()
        )
        + "    custom_hooks:\n"
        "        asr: !name:s3l_plugin.pretrained.load_state_dict_checked\n"
    )
    write_text_atomic(
        os.path.join(folder, HPARAMS_FILE),
        "\n".join(part.rstrip("\n") + "\n" for part in parts),
    )
    write_text_atomic(os.path.join(folder, MODEL_CARD), card)
    return folder


ENCODER_HEADER = """\
# Pretrained S3L encoder, for speechbrain.inference.encoders.WaveformEncoder:
#   ssl = WaveformEncoder.from_hparams(source=<this folder or repo>, ...)
#   ssl.encode_file("utt.wav")            # last layer, (1, T, d_model)
#   ssl.encode_batch(wavs, wav_lens)      # dict: every layer and lengths
# Written by recipes/LibriSpeech/pretrain.py; see README.md.
"""


def write_encoder_folder(folder, encoder, card=""):
    """Writes a ``WaveformEncoder`` inference folder for a pretrained encoder.

    Files: ``hyperparams.yaml``, ``ssl.ckpt`` (the encoder's weights) and
    ``README.md`` (``card``).

    Arguments
    ---------
    folder : str
        Output folder (created; files in it are replaced).
    encoder : s3l_plugin.encoder.S3LEncoder
        The encoder.
    card : str
        The model card (Markdown).

    Returns
    -------
    str
        The folder.

    Example
    -------
    >>> import tempfile
    >>> from s3l_plugin.encoder import S3LEncoder, architecture
    >>> folder = write_encoder_folder(
    ...     tempfile.mkdtemp(), S3LEncoder(**architecture("toy")))
    >>> sorted(os.listdir(folder))
    ['README.md', 'hyperparams.yaml', 'ssl.ckpt']
    """
    encoder = unwrap_module(encoder)
    os.makedirs(folder, exist_ok=True)
    torch.save(_state_dict(encoder), os.path.join(folder, "ssl.ckpt"))
    text = "\n".join(
        [
            ENCODER_HEADER,
            _audio_normalizer_yaml(encoder.features.sample_rate),
            f"ssl_model: {_encoder_yaml(encoder)}",
            "encoder: !new:s3l_plugin.inference.WaveformLayers\n"
            "    encoder: !ref <ssl_model>",
            "modules:\n    encoder: !ref <encoder>",
            "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
            "    loadables:\n"
            "        ssl: !ref <ssl_model>\n"
            "    custom_hooks:\n"
            "        ssl: !name:s3l_plugin.pretrained.load_state_dict_checked\n",
        ]
    )
    write_text_atomic(os.path.join(folder, HPARAMS_FILE), text)
    write_text_atomic(os.path.join(folder, MODEL_CARD), card)
    return folder
