"""Output vocabularies for CTC speech recognition.

Two tokenisers with one interface (``encode``, ``decode``, ``blank_index``,
``len``, ``ctc_vocab_list``): ``CharVocabulary``, the paper's 29 characters,
and ``SentencePieceVocabulary``, sub-words trained on the training
transcripts. Transcripts go in upper-case (LibriSpeech's), words come out
upper-case. Index 0 is always the CTC blank.

Authors
 * S3L contributors 2025
"""

import logging
import os
import string

logger = logging.getLogger(__name__)


class CharVocabulary:
    """The 29 CTC characters: blank, word separator, apostrophe, A-Z.

    Ids: 0 blank, 1 word separator ``|``, 2 apostrophe, 3-28 ``A``-``Z``.
    Text is upper-cased; runs of white space become one separator.

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
    >>> ids = vocab.encode("IT'S  A DOG")
    >>> ids[:4]
    [11, 22, 2, 21]
    >>> vocab.decode(ids)
    "IT'S A DOG"
    """

    BLANK = "<blank>"
    SEPARATOR = "|"
    blank_index = 0

    def __init__(self, unknown="error"):
        if unknown not in ("error", "drop"):
            raise ValueError(f"unknown must be 'error' or 'drop': {unknown}")
        self.unknown = unknown
        self.tokens = [self.BLANK, self.SEPARATOR, "'"] + list(
            string.ascii_uppercase
        )
        self.index = {token: i for i, token in enumerate(self.tokens)}
        self._warned = set()

    def __len__(self):
        return len(self.tokens)

    def encode(self, text):
        """Token ids of a transcript.

        Arguments
        ---------
        text : str
            Transcript (upper-cased here).

        Returns
        -------
        list of int
            Ids, words separated by the separator id.

        Raises
        ------
        ValueError
            On a character outside the vocabulary, if ``unknown="error"``.

        Example
        -------
        >>> CharVocabulary().encode("a b")
        [3, 1, 4]
        """
        words = text.upper().split()
        ids = []
        for word in words:
            if ids:
                ids.append(self.index[self.SEPARATOR])
            for char in word:
                token = self.index.get(char)
                if token is None or token == self.index[self.SEPARATOR]:
                    self._unknown(char, text)
                    continue
                ids.append(token)
        return ids

    def _unknown(self, char, text):
        if self.unknown == "error":
            raise ValueError(
                f"Character {char!r} is not in the CTC character vocabulary "
                f"(A-Z, apostrophe, space) in transcript {text!r}; normalise "
                "the transcripts or use unknown='drop' / vocab: sentencepiece"
            )
        if char not in self._warned:
            self._warned.add(char)
            logger.warning(
                "Character %r is not in the CTC vocabulary: dropped "
                "(first seen in %r)",
                char,
                text,
            )

    def decode(self, ids):
        """Transcript of token ids (blanks ignored; no CTC collapsing).

        Arguments
        ---------
        ids : sequence of int
            Token ids, e.g. from ``greedy_decode``.

        Returns
        -------
        str
            Upper-case words separated by single spaces.

        Example
        -------
        >>> CharVocabulary().decode([0, 3, 1, 1, 4, 1])
        'A B'
        """
        chars = [
            " " if i == 1 else self.tokens[i]
            for i in (int(i) for i in ids)
            if i != self.blank_index
        ]
        return " ".join("".join(chars).split())

    def ctc_vocab_list(self):
        """Token strings for SpeechBrain's ``CTCBeamSearcher``.

        Returns
        -------
        list of str
            The blank as ``""`` and the separator as ``" "`` (the
            searcher's ``space_token``).

        Example
        -------
        >>> CharVocabulary().ctc_vocab_list()[:4]
        ['', ' ', "'", 'A']
        """
        return ["", " "] + self.tokens[2:]


class SentencePieceVocabulary:
    """Sub-word vocabulary from a SentencePiece model, blank at 0.

    CTC id = SentencePiece id + 1. Train the model with
    ``train_sentencepiece`` (unknown pieces map to ``<unk>``).

    Arguments
    ---------
    model_path : str
        A ``.model`` file.

    Example
    -------
    >>> import tempfile
    >>> texts = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG"] * 20
    >>> model = train_sentencepiece(
    ...     texts, os.path.join(tempfile.mkdtemp(), "spm"), vocab_size=16)
    >>> vocab = SentencePieceVocabulary(model)
    >>> len(vocab)
    17
    >>> vocab.decode(vocab.encode("THE DOG SAT"))
    'THE DOG SAT'
    """

    blank_index = 0

    def __init__(self, model_path):
        import sentencepiece

        if not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"SentencePiece model not found: {model_path}"
            )
        self.model_path = model_path
        self.processor = sentencepiece.SentencePieceProcessor(
            model_file=str(model_path)
        )

    def __len__(self):
        return self.processor.get_piece_size() + 1

    def encode(self, text):
        """Token ids of a transcript (upper-cased).

        Arguments
        ---------
        text : str
            Transcript.

        Returns
        -------
        list of int
            CTC ids (SentencePiece ids + 1).
        """
        text = " ".join(text.upper().split())
        return [i + 1 for i in self.processor.encode(text, out_type=int)]

    def decode(self, ids):
        """Transcript of CTC ids (blanks ignored).

        Arguments
        ---------
        ids : sequence of int
            CTC ids.

        Returns
        -------
        str
            Upper-case words separated by single spaces.
        """
        pieces = [int(i) - 1 for i in ids if int(i) != self.blank_index]
        return " ".join(self.processor.decode(pieces).upper().split())

    def ctc_vocab_list(self):
        """Token strings for ``CTCBeamSearcher`` (SentencePiece pieces).

        Returns
        -------
        list of str
            ``""`` for the blank, then the pieces (with ``▁``).
        """
        size = self.processor.get_piece_size()
        return [""] + [self.processor.id_to_piece(i) for i in range(size)]


def train_sentencepiece(texts, model_prefix, vocab_size, model_type="unigram"):
    """Trains a SentencePiece model on transcripts.

    Deterministic for the same texts (one thread, no sampling of the
    input). ``<unk>`` is piece 0; no BOS, EOS or padding pieces.

    Arguments
    ---------
    texts : iterable of str
        Training transcripts (upper-cased here).
    model_prefix : str
        Output prefix: writes ``<prefix>.model`` and ``<prefix>.vocab``.
    vocab_size : int
        Number of pieces (the CTC vocabulary has one more: the blank).
    model_type : str
        ``"unigram"`` or ``"bpe"``.

    Returns
    -------
    str
        Path of the ``.model`` file.

    Example
    -------
    >>> import tempfile
    >>> prefix = os.path.join(tempfile.mkdtemp(), "bpe")
    >>> path = train_sentencepiece(["AB AB ABC"] * 10, prefix, 6, "bpe")
    >>> os.path.basename(path)
    'bpe.model'
    """
    import sentencepiece

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be unigram or bpe: {model_type}")
    folder = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(folder, exist_ok=True)
    sentences = [" ".join(text.upper().split()) for text in texts]
    sentences = [sentence for sentence in sentences if sentence]
    if not sentences:
        raise ValueError("train_sentencepiece: no training transcript")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model_prefix + ".model"


def make_vocabulary(
    kind,
    model_prefix=None,
    texts=None,
    vocab_size=None,
    model_type="unigram",
    unknown="error",
):
    """The vocabulary named in the YAML (``vocab: char|sentencepiece``).

    Arguments
    ---------
    kind : str
        ``"char"`` or ``"sentencepiece"``.
    model_prefix : str, optional
        SentencePiece: where the model is (or is trained, if absent).
    texts : iterable of str, optional
        SentencePiece: training transcripts, used if the model is absent.
    vocab_size : int, optional
        SentencePiece: number of pieces.
    model_type : str
        SentencePiece: ``"unigram"`` or ``"bpe"``.
    unknown : str
        Characters: ``"error"`` or ``"drop"``.

    Returns
    -------
    CharVocabulary or SentencePieceVocabulary

    Example
    -------
    >>> len(make_vocabulary("char"))
    29
    """
    if kind == "char":
        return CharVocabulary(unknown=unknown)
    if kind != "sentencepiece":
        raise ValueError(f"vocab must be 'char' or 'sentencepiece', got {kind}")
    if model_prefix is None or vocab_size is None:
        raise ValueError("sentencepiece needs model_prefix and vocab_size")
    model_path = model_prefix + ".model"
    if not os.path.isfile(model_path):
        if texts is None:
            raise FileNotFoundError(
                f"{model_path} does not exist and no texts to train it"
            )
        logger.info(
            "Training a %d-piece %s SentencePiece model: %s",
            vocab_size,
            model_type,
            model_path,
        )
        train_sentencepiece(texts, model_prefix, vocab_size, model_type)
    vocab = SentencePieceVocabulary(model_path)
    if len(vocab) != vocab_size + 1:
        raise ValueError(
            f"{model_path} has {len(vocab) - 1} pieces, not {vocab_size}: "
            "delete it to retrain, or set the vocabulary size to match"
        )
    return vocab
