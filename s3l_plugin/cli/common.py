"""What the command-line tools share: loading, bad files, exit status."""

import logging
import os
import sys
import tempfile

from tqdm import tqdm

from s3l_plugin.data.audio import AudioLoadError, load_audio

PROG_PREFIX = "s3l"


def fail(message):
    """Ends the tool with ``s3l: error: <message>`` and status 2."""
    print(f"{PROG_PREFIX}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_pretrained(cls, model_dir, savedir=None, device="cpu", **kwargs):
    """``cls.from_hparams(model_dir)``, with a one-line error if unusable.

    Arguments
    ---------
    cls : type
        A ``speechbrain.inference`` class.
    model_dir : str
        Inference folder (or Hub repo id, with ``savedir``).
    savedir : str, optional
        Where SpeechBrain collects the files; default a temporary folder.
    device : str
        Torch device.
    **kwargs
        More ``from_hparams`` arguments (``overrides``).

    Returns
    -------
    object
        The ``cls`` instance.
    """
    if os.path.exists(model_dir) and not os.path.isfile(
        os.path.join(model_dir, "hyperparams.yaml")
    ):
        fail(
            f"{model_dir}: no hyperparams.yaml (give the inference/ folder "
            "a recipe writes)"
        )
    if savedir is None:
        savedir = tempfile.mkdtemp(prefix="s3l_model_")
    # SpeechBrain logs each fetched file; the tool's output is the result.
    logging.getLogger("speechbrain").setLevel(logging.WARNING)
    try:
        return cls.from_hparams(
            source=model_dir,
            savedir=savedir,
            run_opts={"device": device},
            **kwargs,
        )
    except (OSError, ValueError, RuntimeError) as error:
        fail(f"{model_dir}: cannot load the model ({error})")


def read_audio(path, sample_rate, min_seconds=0.0):
    """A waveform, or None after one line naming the file and the problem.

    Arguments
    ---------
    path : str
        Audio file.
    sample_rate : int
        The model's rate (other rates are resampled).
    min_seconds : float
        Shortest usable duration.

    Returns
    -------
    torch.Tensor or None
        (S,) waveform.
    """
    try:
        return load_audio(
            path, sample_rate=sample_rate, min_seconds=min_seconds
        )
    except AudioLoadError as error:
        skip(error)
        return None


def skip(message):
    """One ``s3l: skipped ...`` line on stderr (above the progress bar)."""
    tqdm.write(f"{PROG_PREFIX}: skipped {message}", file=sys.stderr)


def progress(items, desc):
    """A tqdm progress bar on stderr (off when stderr is not a terminal)."""
    return tqdm(items, desc=desc, unit="file", file=sys.stderr, disable=None)
