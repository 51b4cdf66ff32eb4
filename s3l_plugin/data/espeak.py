"""A minimal ctypes binding to eSpeak NG for speech synthesis.

The library and its data come from the ``espeakng-loader`` wheel, so nothing
needs to be installed system-wide.

Reproducibility: eSpeak NG seeds its random generator from the clock at
start-up and keeps other state (waveform phase, pitch smoothing) from one
utterance to the next that neither ``espeak_Terminate`` nor a new
``espeak_Initialize`` resets. :meth:`ESpeak.synthesize` re-seeds the
generator for every utterance, but the audio of an utterance still depends
on what the same process synthesised before. For identical audio from run
to run, synthesise the same sequence of utterances in a fresh process.
"""

import ctypes
from dataclasses import dataclass

import numpy as np

# Values from eSpeak NG's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class Voice:
    """How one synthetic speaker sounds.

    Arguments
    ---------
    name : str
        eSpeak voice, a language with an optional variant, e.g.
        ``"en-gb-scotland+f2"``.
    rate : int
        Speaking rate in words per minute (80-450).
    pitch : int
        Base pitch, 0-100 (50 is the voice's own).
    pitch_range : int
        Pitch variation, 0-100 (0 is monotone, 50 the voice's own).

    Example
    -------
    >>> Voice("en-us+m3", rate=160, pitch=40, pitch_range=60).name
    'en-us+m3'
    """

    name: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


class ESpeak:
    """Synthesises text with eSpeak NG, returning int16 samples.

    The library keeps global state, so a process should hold one instance.

    Example
    -------
    >>> tts = ESpeak()
    >>> audio = tts.synthesize("hello world", Voice("en"), seed=0)
    >>> audio.dtype, tts.sample_rate, len(audio) > tts.sample_rate // 2
    (dtype('int16'), 22050, True)
    """

    def __init__(self):
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int] * 3
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        data_path = espeakng_loader.get_data_path().encode()
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            raise RuntimeError(
                f"eSpeak NG failed to initialise (data path {data_path!r})"
            )
        self.sample_rate = sample_rate
        self._lib = lib
        self._chunks = []
        # Kept on the instance: ctypes must not free the callback while the
        # library holds a pointer to it.
        self._callback = _CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, num_samples, events):
        """Receives audio from the library; returning 0 continues."""
        if num_samples > 0:
            chunk = np.ctypeslib.as_array(samples, shape=(num_samples,))
            self._chunks.append(chunk.copy())
        return 0

    def synthesize(self, text, voice, seed=0):
        """Speaks ``text`` with ``voice``.

        Arguments
        ---------
        text : str
            Text to speak.
        voice : Voice
            Voice and prosody.
        seed : int
            Seed of eSpeak's random generator for this utterance.

        Returns
        -------
        numpy.ndarray
            int16 samples at ``self.sample_rate``.
        """
        lib = self._lib
        if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice.name!r}")
        for parameter, value in (
            (_RATE, voice.rate),
            (_PITCH, voice.pitch),
            (_RANGE, voice.pitch_range),
        ):
            lib.espeak_SetParameter(parameter, int(value), 0)
        lib.espeak_ng_SetRandSeed(seed)
        self._chunks = []
        encoded = text.encode("utf-8")
        status = lib.espeak_Synth(
            encoded,
            len(encoded) + 1,
            0,
            _POS_CHARACTER,
            0,
            _CHARS_UTF8,
            None,
            None,
        )
        if status != 0:
            raise RuntimeError(f"eSpeak NG failed (status {status}): {text!r}")
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)
