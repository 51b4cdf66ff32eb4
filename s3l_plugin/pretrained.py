"""Building, saving, loading and using a pretrained S3L encoder.

A pretrained encoder is a folder holding two files:

- ``encoder.ckpt``: the student ``S3LEncoder``'s ``state_dict`` (torch.save);
- ``encoder_config.json``: its architecture (``EncoderArchitecture``), and
  nothing else: dropouts and the runtime knobs are chosen by whoever uses
  it. Keys of other kinds in older files are ignored.

``build_encoder`` builds an (unloaded) encoder from such a folder or a named
size, for YAML (``!apply:``); ``transfer_encoder`` is the strict, checked
load as a SpeechBrain ``Pretrainer`` hook; ``load_encoder`` does both;
``extract_features`` gives the per-layer representations of waveforms.

Authors
 * S3L contributors 2025
"""

import json
import logging
import os
import pickle

import torch

from s3l_plugin.checkpointing import (
    CheckpointLoadError,
    CheckpointMismatchError,
    state_dict_difference,
)
from s3l_plugin.data.atomic import atomic_path, write_text_atomic
from s3l_plugin.data.audio import MAX_AMPLITUDE, load_audio
from s3l_plugin.distributed import unwrap_module
from s3l_plugin.encoder import EncoderArchitecture, S3LEncoder, architecture

logger = logging.getLogger(__name__)

CKPT_FILE = "encoder.ckpt"
CONFIG_FILE = "encoder_config.json"
ARCHITECTURE_KEYS = EncoderArchitecture.keys()


def save_encoder(encoder, folder, config=None):
    """Writes ``encoder.ckpt`` and ``encoder_config.json`` into ``folder``.

    Arguments
    ---------
    encoder : S3LEncoder
        The encoder (a DDP wrapper is unwrapped).
    folder : str
        Output folder (created if needed).
    config : dict, optional
        Architecture; default ``encoder.config``.

    Returns
    -------
    str
        Path of ``encoder.ckpt``.

    Example
    -------
    >>> import tempfile
    >>> encoder = S3LEncoder(**architecture("toy"))
    >>> folder = tempfile.mkdtemp()
    >>> os.path.basename(save_encoder(encoder, folder))
    'encoder.ckpt'
    >>> sorted(os.listdir(folder))
    ['encoder.ckpt', 'encoder_config.json']
    """
    encoder = unwrap_module(encoder)
    if config is None:
        config = getattr(encoder, "config", None)
    if config is None:
        raise ValueError(
            f"{type(encoder).__name__} has no `config`: pass its "
            "architecture as save_encoder(encoder, folder, config)"
        )
    os.makedirs(folder, exist_ok=True)
    ckpt_path = os.path.join(folder, CKPT_FILE)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    with atomic_path(ckpt_path) as tmp_path:
        torch.save(state, tmp_path)
    config = EncoderArchitecture(**architecture_of(config)).to_dict()
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_text_atomic(os.path.join(folder, CONFIG_FILE), text)
    return ckpt_path


def encoder_files(path):
    """The checkpoint and config paths of a pretrained encoder.

    Arguments
    ---------
    path : str
        The folder holding both files, or the ``.ckpt`` file with
        ``encoder_config.json`` beside it.

    Returns
    -------
    ckpt_path : str
    config_path : str

    Raises
    ------
    FileNotFoundError
        Naming the missing file.

    Example
    -------
    >>> encoder_files("missing_folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: Pretrained encoder not found: missing_folder ...
    """
    if os.path.isdir(path):
        ckpt_path = os.path.join(path, CKPT_FILE)
    elif os.path.isfile(path):
        ckpt_path = path
    else:
        raise FileNotFoundError(
            f"Pretrained encoder not found: {path} is neither a folder "
            f"holding {CKPT_FILE} and {CONFIG_FILE} nor a checkpoint file"
        )
    config_path = os.path.join(os.path.dirname(ckpt_path), CONFIG_FILE)
    for name in (ckpt_path, config_path):
        if not os.path.isfile(name):
            raise FileNotFoundError(
                f"Pretrained encoder file missing: {name} (a pretrained "
                f"encoder folder holds {CKPT_FILE} and {CONFIG_FILE}, as "
                "written by pretrain.py)"
            )
    return ckpt_path, config_path


def read_encoder_config(path):
    """The ``encoder_config.json`` of a pretrained encoder, as saved.

    Arguments
    ---------
    path : str
        Folder, ``.ckpt`` file (config beside it) or the JSON file itself.

    Returns
    -------
    dict

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_encoder(S3LEncoder(**architecture("toy")), folder)
    >>> read_encoder_config(folder)["d_model"]
    16
    """
    if str(path).endswith(".json") and os.path.isfile(path):
        config_path = path
    else:
        _, config_path = encoder_files(path)
    with open(config_path, encoding="utf-8") as fin:
        try:
            config = json.load(fin)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path}: invalid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    return config


def architecture_of(config):
    """The architecture keys of a config (older files hold more).

    Arguments
    ---------
    config : dict
        ``encoder_config.json`` contents or ``S3LEncoder`` arguments.

    Returns
    -------
    dict
        The items whose keys are ``ARCHITECTURE_KEYS``.

    Example
    -------
    >>> architecture_of({"d_model": 16, "conv_impl": "fft", "dropout": 0.1})
    {'d_model': 16}
    """
    return {k: v for k, v in config.items() if k in ARCHITECTURE_KEYS}


def build_encoder(pretrained_path=None, size="tiny", **options):
    """An ``S3LEncoder`` with a pretrained encoder's architecture, unloaded.

    For YAML: ``encoder: !apply:s3l_plugin.pretrained.build_encoder``; the
    weights are loaded afterwards (``transfer_encoder``, a ``Pretrainer``).

    Arguments
    ---------
    pretrained_path : str, optional
        Folder with ``encoder_config.json`` (or the ``.ckpt`` beside it, or
        the JSON itself); None builds the named ``size``.
    size : str
        ``"tiny"`` (the CPU demo's), ``"base"`` (the paper's) or ``"toy"``;
        used only without ``pretrained_path``.
    **options
        Non-architecture ``S3LEncoder`` arguments: ``dropout``,
        ``attention_dropout``, ``activation_dropout``, ``conv_dropout``,
        ``attention_backend``, ``conv_impl``.

    Returns
    -------
    S3LEncoder

    Raises
    ------
    FileNotFoundError
        Naming the missing file.
    ValueError
        If ``options`` holds an architecture key, or the JSON is invalid.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_encoder(S3LEncoder(**architecture("toy")), folder)
    >>> build_encoder(folder, dropout=0.0).architecture.d_model
    16
    >>> build_encoder(size="base").architecture.d_model
    512
    """
    fixed = sorted(set(options) & set(ARCHITECTURE_KEYS))
    if fixed:
        raise ValueError(
            f"build_encoder: {fixed} are architecture keys, fixed by the "
            "pretrained encoder's encoder_config.json or the size"
        )
    if pretrained_path is None:
        return S3LEncoder(**options, **architecture(size))
    config = read_encoder_config(pretrained_path)
    try:
        return S3LEncoder(**options, **architecture_of(config))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{pretrained_path}/{CONFIG_FILE}: {error}") from None


def load_state_dict_checked(module, path, map_location="cpu"):
    """Loads ``path`` into ``module`` strictly, with a one-line error.

    Arguments
    ---------
    module : torch.nn.Module
        The model (a DDP wrapper is unwrapped).
    path : str
        A ``torch.save``-d state_dict.
    map_location : str or torch.device
        Where tensors are loaded.

    Raises
    ------
    CheckpointLoadError
        If ``path`` cannot be read back as tensors (damaged, not a torch
        file, or holding objects that are never unpickled).
    CheckpointMismatchError
        If it holds another architecture's parameters.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "lin.ckpt")
    >>> torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    >>> load_state_dict_checked(torch.nn.Linear(2, 3), path)
    """
    module = unwrap_module(module)
    if os.path.islink(path):
        # As a Pretrainer collects it: name the file the user gave.
        path = os.path.realpath(path)
    try:
        state_dict = torch.load(
            path, map_location=map_location, weights_only=True
        )
    except pickle.UnpicklingError as error:
        # weights_only refused it; torch's message suggests the unsafe load.
        raise CheckpointLoadError(
            f"cannot load {path}: it holds objects other than tensors and "
            "plain data, which are never unpickled (a damaged or tampered "
            "file)"
        ) from error
    except Exception as error:  # torch raises many types for a bad file
        detail = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointLoadError(
            f"cannot load {path}: not a readable torch file "
            f"({type(error).__name__}: {detail})"
        ) from error
    if not isinstance(state_dict, dict):
        raise CheckpointLoadError(
            f"cannot load {path}: it holds a {type(state_dict).__name__}, "
            "not a state_dict"
        )
    problem = state_dict_difference(state_dict, module.state_dict())
    if problem:
        raise CheckpointMismatchError(
            f"{path} does not match the {type(module).__name__} architecture "
            f"({problem}); build the model with the checkpoint's {CONFIG_FILE}"
        )
    module.load_state_dict(state_dict, strict=True)


def transfer_encoder(obj, path):
    """``Pretrainer`` hook: strict, checked load of an encoder checkpoint.

    SpeechBrain's default transfer is non-strict (a mismatch only logs
    warnings); use this as ``custom_hooks: {encoder: !name:...}``.

    Arguments
    ---------
    obj : torch.nn.Module
        The encoder.
    path : str
        Its ``encoder.ckpt``.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = save_encoder(S3LEncoder(**architecture("toy")), folder)
    >>> transfer_encoder(S3LEncoder(**architecture("toy")), path)
    """
    load_state_dict_checked(obj, path)
    logger.info("Pretrained encoder loaded from %s", path)


def load_encoder(path, map_location="cpu", **options):
    """Rebuilds a pretrained ``S3LEncoder``, in eval mode.

    Arguments
    ---------
    path : str
        Folder with ``encoder.ckpt`` and ``encoder_config.json``, or the
        ``.ckpt`` file with the JSON beside it.
    map_location : str or torch.device
        Device of the returned encoder.
    **options
        Non-architecture ``S3LEncoder`` arguments (e.g.
        ``attention_backend="sdpa"``, ``dropout=0.0``).

    Returns
    -------
    S3LEncoder

    Raises
    ------
    FileNotFoundError
        Naming the missing file.
    CheckpointMismatchError
        If the checkpoint does not fit the configured architecture.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_encoder(S3LEncoder(**architecture("toy")), folder)
    >>> encoder = load_encoder(folder, attention_backend="sdpa")
    >>> encoder.training, encoder.attention_backend
    (False, 'sdpa')
    """
    ckpt_path, _ = encoder_files(path)
    encoder = build_encoder(path, **options)
    load_state_dict_checked(encoder, ckpt_path)
    return encoder.to(map_location).eval()


def extract_features(encoder, wavs, wav_lens=None, layers=None):
    """Per-layer representations of a batch of waveforms.

    Runs in eval mode (dropout off) without gradients; the encoder's
    train/eval mode is restored afterwards. Padded frames are 0.

    Arguments
    ---------
    encoder : S3LEncoder
        The encoder.
    wavs : torch.Tensor
        (B, S) 16 kHz waveforms, or (S,) for one.
    wav_lens : torch.Tensor, optional
        (B,) relative lengths; None means all full.
    layers : list of int, optional
        Indices of the transformer layers to return (negative counts from
        the end: ``[-2, -1]`` is the last two); None means all.

    Returns
    -------
    features : list of torch.Tensor
        One (B, T_i, d_model) tensor per selected layer, in order (transf1
        layers at 40 ms, transf2 layers at 80 ms).
    lengths : list of torch.Tensor
        (B,) long valid frames of each.

    Raises
    ------
    ValueError
        If ``wavs`` holds NaN, Inf or samples above ``MAX_AMPLITUDE`` in
        magnitude (the features would be NaN).

    Example
    -------
    >>> encoder = S3LEncoder(**architecture("toy"))
    >>> feats, lens = extract_features(encoder, torch.randn(2, 16000),
    ...                                torch.tensor([1.0, 0.5]))
    >>> [tuple(f.shape) for f in feats], lens[-1].tolist()
    ([(2, 23, 16), (2, 10, 16)], [10, 3])
    """
    if wavs.dim() == 1:
        wavs = wavs.unsqueeze(0)
    peak = float(wavs.detach().abs().max()) if wavs.numel() else 0.0
    if not peak <= MAX_AMPLITUDE:  # NaN fails too
        raise ValueError(
            f"waveform peak amplitude {peak:.3g}: samples must be finite and "
            f"at most {MAX_AMPLITUDE:.0e} in magnitude (float audio lies "
            "within [-1, 1]); the features would be NaN"
        )
    device = next(encoder.parameters()).device
    wavs = wavs.to(device)
    if wav_lens is not None:
        wav_lens = wav_lens.to(device)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            feats, feat_lens = encoder.features(wavs, wav_lens)
            encoded = encoder.encode(feats, feat_lens, return_layers=True)
    finally:
        encoder.train(was_training)
    num_layers = len(encoded.layers)
    indices = range(num_layers) if layers is None else layers
    outputs, lengths = [], []
    for index in indices:
        if not -num_layers <= index < num_layers:
            raise IndexError(
                f"layer {index} out of range: the encoder has {num_layers} "
                "transformer layers"
            )
        outputs.append(encoded.layers[index])
        lengths.append(encoded.layer_lengths[index])
    return outputs, lengths


def extract_features_from_file(encoder, path, layers=None):
    """Per-layer representations of one audio file.

    The file is read with soundfile; several channels are down-mixed and
    another sample rate is resampled to the encoder's (16 kHz), each with a
    warning.

    Arguments
    ---------
    encoder : S3LEncoder
        The encoder.
    path : str
        Audio file (WAV, FLAC, ...).
    layers : list of int, optional
        As in ``extract_features``.

    Returns
    -------
    features : list of torch.Tensor
        One (1, T_i, d_model) tensor per selected layer.
    lengths : list of torch.Tensor
        (1,) valid frames of each.

    Raises
    ------
    s3l_plugin.data.audio.AudioLoadError
        If the file cannot be used (unreadable, empty, silent, NaN, Inf
        or huge samples), naming it and the reason.

    Example
    -------
    >>> import tempfile, numpy, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, numpy.random.randn(4000, 2) * 0.1, 8000)
    >>> encoder = S3LEncoder(**architecture("toy"))
    >>> feats, _ = extract_features_from_file(encoder, path, layers=[-1])
    >>> tuple(feats[0].shape)
    (1, 3, 16)
    """
    sample_rate = encoder.features.sample_rate
    wav = load_audio(path, sample_rate=sample_rate)
    return extract_features(encoder, wav.unsqueeze(0), layers=layers)
