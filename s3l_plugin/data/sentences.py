"""Transcript text for the synthetic corpus: word list, sentences, cleaning.

Transcripts follow LibriSpeech's convention: upper-case words made of the
letters A-Z and the apostrophe, separated by single spaces.
"""

import re
from importlib import resources

WORDS_RESOURCE = "words.txt"

# Anything that is not a letter or an apostrophe separates words, as in
# LibriSpeech's normalised transcripts.
_NON_WORD = re.compile(r"[^A-Z']+")


def load_words():
    """Reads the package's list of common English words.

    The list (``s3l_plugin/data/words.txt``, one lower-case word a line)
    is ordered roughly from the most to the least frequent word.

    Returns
    -------
    list of str
        The words, in file order.

    Example
    -------
    >>> words = load_words()
    >>> len(words) >= 500, words[0]
    (True, 'the')
    """
    text = (
        resources.files(__package__)
        .joinpath(WORDS_RESOURCE)
        .read_text(encoding="utf-8")
    )
    return [line.strip() for line in text.splitlines() if line.strip()]


def normalize_transcript(text):
    """Turns free text into a LibriSpeech-style transcript.

    Arguments
    ---------
    text : str
        Any text.

    Returns
    -------
    str
        Upper-case words of letters and apostrophes, single-spaced; empty
        when the text holds no letter.

    Example
    -------
    >>> normalize_transcript("  Don't panic -- it's 42, OK?")
    "DON'T PANIC IT'S OK"
    """
    words = _NON_WORD.sub(" ", text.upper()).split()
    # A lone apostrophe (a quotation mark) is not a word.
    words = [word.strip("'") for word in words]
    return " ".join(word for word in words if word)


class SentenceGenerator:
    """Draws random sentences from a word list, frequent words more often.

    Word ``r`` (0-based rank in the list) is drawn with probability
    proportional to ``1 / (r + 10)``, a flattened Zipf law, so sentences
    have the mix of function and content words of real text.

    Arguments
    ---------
    words : list of str
        Vocabulary, most frequent first.
    min_words : int
        Fewest words in a sentence.
    max_words : int
        Most words in a sentence.

    Example
    -------
    >>> import random
    >>> generator = SentenceGenerator(["a", "b", "c"], 2, 4)
    >>> sentence = generator.sentence(random.Random(0))
    >>> 2 <= len(sentence.split()) <= 4, sentence.isupper()
    (True, True)
    """

    def __init__(self, words, min_words=5, max_words=30):
        if not words:
            raise ValueError("SentenceGenerator needs a non-empty word list")
        if not 1 <= min_words <= max_words:
            raise ValueError(
                f"need 1 <= min_words <= max_words, got {min_words} and "
                f"{max_words}"
            )
        self.words = [normalize_transcript(word) for word in words]
        self.min_words = min_words
        self.max_words = max_words
        self._cum_weights = []
        total = 0.0
        for rank in range(len(self.words)):
            total += 1.0 / (rank + 10)
            self._cum_weights.append(total)

    def sentence(self, rng):
        """Draws one sentence.

        Arguments
        ---------
        rng : random.Random
            Source of randomness (the sentence is a function of its state).

        Returns
        -------
        str
            An upper-case transcript.
        """
        num_words = rng.randint(self.min_words, self.max_words)
        return " ".join(
            rng.choices(self.words, cum_weights=self._cum_weights, k=num_words)
        )


def read_text_lines(path):
    """Reads a text file as transcripts, one per non-empty line.

    Arguments
    ---------
    path : str
        A UTF-8 text file.

    Returns
    -------
    list of str
        Normalised transcripts (see :func:`normalize_transcript`), lines
        without letters left out.

    Raises
    ------
    ValueError
        If no line holds a word.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "text.txt")
    >>> _ = open(path, "w").write("Hello, world!\\n\\n123\\nGood-bye.\\n")
    >>> read_text_lines(path)
    ['HELLO WORLD', 'GOOD BYE']
    """
    with open(path, encoding="utf-8") as text_file:
        lines = [normalize_transcript(line) for line in text_file]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path}: no line holds a word")
    return lines
