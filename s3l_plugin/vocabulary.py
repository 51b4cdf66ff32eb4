"""CTC output vocabularies on SpeechBrain's text encoders.

Two vocabularies with one interface (``encode``, ``decode``,
``blank_index``, ``len``, ``ctc_vocab_list``), index 0 being the CTC blank:

- :class:`CharVocabulary`: the paper's 29 characters (blank, space,
  apostrophe, A-Z) in SpeechBrain's ``CTCTextEncoder``; a character outside
  them is an error or is dropped with a warning, never silently mapped;
- :class:`SubwordVocabulary`: the pieces of a SentencePiece model trained
  by SpeechBrain's ``SentencePiece`` tokenizer on the training
  transcripts.

Transcripts go in upper-case (LibriSpeech's), words come out upper-case.
"""

import logging
import string

from speechbrain.dataio.encoder import CTCTextEncoder

logger = logging.getLogger(__name__)

CHARACTERS = [" ", "'", *string.ascii_uppercase]
CHARS = frozenset(CHARACTERS)


def _normalise(text):
    """Upper case, single spaces."""
    return " ".join(text.upper().split())


class CharVocabulary:
    """The 29 CTC characters: blank, space, apostrophe, A-Z.

    Arguments
    ---------
    unknown : str
        What ``encode`` does with any other character: ``"error"``
        (ValueError naming it) or ``"drop"`` (left out, with a warning the
        first time each character is seen).

    Example
    -------
    >>> vocab = CharVocabulary()
    >>> len(vocab), vocab.blank_index
    (29, 0)
    >>> ids = vocab.encode("it's  a dog")
    >>> ids[:4]
    [11, 22, 2, 21]
    >>> vocab.decode(ids)
    "IT'S A DOG"
    """

    blank_index = 0
    # Token names for decoders that take a token list (flashlight's): the
    # blank, and the space as the word separator.
    BLANK = "<blank>"
    SEPARATOR = "|"

    def __init__(self, unknown="error"):
        if unknown not in ("error", "drop"):
            raise ValueError(f"unknown must be 'error' or 'drop': {unknown}")
        self.unknown = unknown
        self.encoder = CTCTextEncoder()
        self.encoder.insert_blank(index=self.blank_index)
        self.encoder.update_from_iterable(CHARACTERS, sequence_input=False)
        self._warned = set()

    def __len__(self):
        return len(self.encoder)

    def encode(self, text):
        """Token ids of a transcript.

        Arguments
        ---------
        text : str
            Transcript (upper-cased, white space collapsed).

        Returns
        -------
        list of int

        Raises
        ------
        ValueError
            On a character outside the vocabulary, if ``unknown="error"``.
        """
        text = _normalise(text)
        unknown = [char for char in dict.fromkeys(text) if char not in CHARS]
        for char in unknown:
            if self.unknown == "error":
                raise ValueError(
                    f"Character {char!r} is not in the CTC character "
                    f"vocabulary (A-Z, apostrophe, space) in transcript "
                    f"{text!r}; normalise the transcripts or use "
                    "unknown_chars: drop / vocab: sentencepiece"
                )
            if char not in self._warned:
                self._warned.add(char)
                logger.warning(
                    "Character %r is not in the CTC vocabulary: dropped "
                    "(first seen in %r)",
                    char,
                    text,
                )
        if unknown:
            text = _normalise("".join(c for c in text if c in CHARS))
        return self.encoder.encode_sequence(list(text))

    def decode(self, ids):
        """Transcript of token ids (blanks ignored; no CTC collapsing).

        Arguments
        ---------
        ids : sequence of int
            Token ids, e.g. from ``greedy_decode``.

        Returns
        -------
        str

        Example
        -------
        >>> CharVocabulary().decode([0, 3, 1, 1, 4, 1])
        'A B'
        """
        ids = [int(i) for i in ids if int(i) != self.blank_index]
        return _normalise("".join(self.encoder.decode_ndim(ids)))

    @property
    def tokens(self):
        """Token names in id order, for a lexicon decoder.

        Example
        -------
        >>> CharVocabulary().tokens[:4]
        ['<blank>', '|', "'", 'A']
        """
        names = {"": self.BLANK, " ": self.SEPARATOR}
        return [names.get(token, token) for token in self.ctc_vocab_list()]

    def ctc_vocab_list(self):
        """Token strings for SpeechBrain's ``CTCBeamSearcher``.

        Returns
        -------
        list of str
            The blank as ``""``; the space is the searcher's
            ``space_token``.

        Example
        -------
        >>> CharVocabulary().ctc_vocab_list()[:4]
        ['', ' ', "'", 'A']
        """
        labels = self.encoder.ind2lab
        return [""] + [labels[i] for i in range(1, len(self))]


class SubwordVocabulary:
    """SentencePiece pieces; CTC id = piece id + 1 (0 is the blank).

    Arguments
    ---------
    tokenizer : speechbrain.tokenizers.SentencePiece.SentencePiece
        Trained on the training transcripts (``unk_id=0``, no BOS, EOS or
        padding pieces: SpeechBrain's defaults).

    Example
    -------
    >>> import os, tempfile
    >>> from speechbrain.tokenizers.SentencePiece import SentencePiece
    >>> folder = tempfile.mkdtemp()
    >>> csv = os.path.join(folder, "train.csv")
    >>> rows = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG"] * 20
    >>> with open(csv, "w") as out:
    ...     _ = out.write("ID,wrd\\n")
    ...     for i, row in enumerate(rows):
    ...         _ = out.write(f"u{i},{row}\\n")
    >>> vocab = SubwordVocabulary(
    ...     SentencePiece(folder, 16, annotation_train=csv, annotation_read="wrd")
    ... )
    >>> len(vocab)
    17
    >>> vocab.decode(vocab.encode("the dog sat"))
    'THE DOG SAT'
    """

    blank_index = 0

    def __init__(self, tokenizer):
        self.processor = tokenizer.sp

    def __len__(self):
        return self.processor.get_piece_size() + 1

    def encode(self, text):
        """CTC ids of a transcript (upper-cased, white space collapsed)."""
        pieces = self.processor.encode_as_ids(_normalise(text))
        return [piece + 1 for piece in pieces]

    def decode(self, ids):
        """Transcript of CTC ids (blanks ignored; no CTC collapsing)."""
        pieces = [int(i) - 1 for i in ids if int(i) != self.blank_index]
        return _normalise(self.processor.decode_ids(pieces))

    def ctc_vocab_list(self):
        """``""`` for the blank, then the pieces (with ``▁``)."""
        size = self.processor.get_piece_size()
        return [""] + [self.processor.id_to_piece(i) for i in range(size)]
