"""A small English grammar for the synthetic corpus's transcripts.

Random word strings (:class:`~s3l_plugin.data.sentences.SentenceGenerator`)
leave a word language model nothing to learn. The sentences here come from
templates with slots (who did what to what, where and when), so word
n-grams learned from the training transcripts predict held-out sentences
of the same grammar, as a LibriSpeech LM predicts book text, while the
number of distinct sentences is large enough that dev and test sentences
are mostly unseen as a whole.

The grammar is a context-free grammar without recursion: a nonterminal is
written ``<NAME>`` and expands to one of its alternatives, the first
ones more often (a flattened Zipf law, 1 / (rank + 3), as for common words
in text; list an alternative twice to make it more likely still). About
300 words, each made of the letters a-z only, so that eSpeak NG reads
every word and the CTC character vocabulary spells it.
"""

import re

# Nonterminal -> alternatives (word lists written as one string, split).
# Sentences are in the past tense or use a modal, so verbs need no
# agreement with their subject; "a" before a vowel becomes "an" (see
# GrammarSentenceGenerator.sentence).
GRAMMAR = {
    "S": [
        "<AGENT> <VT> <THING>",
        "<AGENT> <VT> <THING> <PLACE_PP>",
        "<AGENT> <VT> <THING> <PAST_TIME>",
        "<PAST_TIME> <AGENT> <VT> <THING>",
        "<AGENT> <VI> <PLACE_PP>",
        "<AGENT> <VI> <PLACE_PP> <PAST_TIME>",
        "<AGENT> <VI> <MANNER> <PLACE_PP>",
        "<AGENT> <VI> <MANNER> <PAST_TIME>",
        "<AGENT> and <AGENT> <VI> <PLACE_PP>",
        "<AGENT> gave <PERSON_NP> <THING>",
        "<AGENT> gave <THING> to <PERSON_NP>",
        "<AGENT> will <VT_BASE> <THING> <FUTURE_TIME>",
        "<AGENT> wanted to <VT_BASE> <THING>",
        "<AGENT> could not <VT_BASE> <THING> <PLACE_PP>",
        "<AGENT> looked for <THING> <PLACE_PP>",
        "did <AGENT> <VT_BASE> <THING> <PLACE_PP>",
        "where did <AGENT> <VT_BASE> <THING>",
        "there was <THING> <PLACE_PP>",
        "<THING> <PLACE_PP> was <THING_ADJ>",
        "<AGENT> was <MOOD> <PAST_TIME>",
        "<AGENT> said that <AGENT> <VT> <THING>",
        "<AGENT> said that <AGENT> <VI> <PLACE_PP>",
    ],
    "AGENT": [
        "<DET> <PERSON>",
        "<DET> <PERSON>",
        "<DET> <AGE_ADJ> <PERSON>",
        "<DET> <MOOD> <PERSON>",
        "<DET> <ANIMAL>",
        "<DET> <COLOUR> <ANIMAL>",
        "<NAME>",
        "<NAME>",
    ],
    "PERSON_NP": [
        "<DET> <PERSON>",
        "<DET> <AGE_ADJ> <PERSON>",
        "<NAME>",
    ],
    "THING": [
        "<DET> <OBJECT>",
        "<DET> <OBJECT>",
        "<DET> <COLOUR> <OBJECT>",
        "<DET> <THING_ADJ> <OBJECT>",
        "<DET> <SIZE> <OBJECT>",
    ],
    "PLACE_PP": [
        "<PREP> <DEF_DET> <PLACE>",
        "<PREP> <DEF_DET> <PLACE>",
        "<PREP> <DEF_DET> <SIZE> <PLACE>",
        "<PREP> <DEF_DET> <AGE_ADJ> <PLACE>",
    ],
    "PAST_TIME": [
        "yesterday",
        "last night",
        "last week",
        "this morning",
        "in the morning",
        "in the evening",
        "at noon",
        "at night",
        "after dinner",
        "before breakfast",
        "on <DAY>",
        "on <DAY> <PART_OF_DAY>",
        "every day",
        "once again",
    ],
    "FUTURE_TIME": [
        "tomorrow",
        "tonight",
        "next week",
        "soon",
        "later",
        "on <DAY>",
        "on <DAY> <PART_OF_DAY>",
        "in the morning",
        "after lunch",
    ],
    "PART_OF_DAY": "morning afternoon evening night".split(),
    "DAY": "monday tuesday wednesday thursday friday saturday sunday".split(),
    "DET": "the the the a a this that my your his her our their".split(),
    "DEF_DET": "the the the this that my our their".split(),
    "PREP": (
        "in near behind beside inside outside across under by at to from"
    ).split(),
    "PERSON": (
        "man woman boy girl child farmer teacher doctor baker sailor "
        "soldier king queen prince princess captain driver painter student "
        "neighbour friend mother father sister brother"
    ).split(),
    "ANIMAL": (
        "dog cat horse bird fox rabbit mouse cow sheep goat duck owl wolf "
        "bear pig"
    ).split(),
    "NAME": (
        "john mary peter anna james emma tom lucy david sarah paul alice "
        "george helen robert kate"
    ).split(),
    "OBJECT": (
        "book letter box cup ball hat coat key bag basket bottle candle "
        "chair table clock lamp map picture ring rope shoe stone ticket "
        "umbrella apple bread cake egg orange flower knife plate pencil "
        "window door bell blanket coin boat newspaper"
    ).split(),
    "PLACE": (
        "garden house kitchen market river forest school village city park "
        "station church field farm hill road bridge library shop lake "
        "harbour castle barn office beach"
    ).split(),
    "SIZE": "big small large little tall long short".split(),
    "AGE_ADJ": "old young new famous strange quiet".split(),
    "COLOUR": "red green blue yellow white black brown grey".split(),
    "THING_ADJ": (
        "heavy light clean dirty broken empty wooden shiny warm cold wet dry"
    ).split(),
    "MOOD": (
        "happy sad tired hungry angry kind brave clever busy lonely"
    ).split(),
    "MANNER": (
        "slowly quickly quietly loudly happily carefully alone together "
        "again early"
    ).split(),
    "VI": (
        "walked ran slept waited sang laughed danced sat stood swam played "
        "worked rested cried smiled jumped shouted stayed arrived returned"
    ).split(),
    "VT": (
        "found saw took carried opened painted washed dropped bought sold "
        "hid lost kept brought cleaned fixed moved pushed pulled held "
        "needed liked watched chose counted filled covered touched broke "
        "wrapped"
    ).split(),
    "VT_BASE": (
        "find see take carry open paint wash drop buy sell hide lose keep "
        "bring clean fix move push pull hold need like watch choose count "
        "fill cover touch break wrap"
    ).split(),
}
START = "S"
_SLOT = re.compile(r"^<([A-Z_]+)>$")
_VOWELS = "aeiou"


def _expand(grammar, symbol, rng, words):
    """Appends a random expansion of ``symbol`` to ``words``."""
    alternatives = grammar[symbol]
    (alternative,) = rng.choices(alternatives, _zipf_weights(len(alternatives)))
    for token in alternative.split():
        slot = _SLOT.match(token)
        if slot:
            _expand(grammar, slot.group(1), rng, words)
        else:
            words.append(token)


def _zipf_weights(count):
    """Weights of a flattened Zipf law, 1 / (rank + 3): the first
    alternatives are drawn most often, as common words are in text."""
    return [1.0 / (rank + 3) for rank in range(count)]


def _check_grammar(grammar, start):
    """Raises ValueError on an undefined slot, a bad word or recursion."""
    if start not in grammar:
        raise ValueError(f"grammar has no start symbol {start!r}")

    def visit(symbol, path):
        if symbol in path:
            raise ValueError(f"grammar is recursive: {' -> '.join(path)}")
        for alternative in grammar[symbol]:
            for token in alternative.split():
                slot = _SLOT.match(token)
                if slot is None:
                    if not re.fullmatch(r"[a-z']+", token):
                        raise ValueError(
                            f"grammar word {token!r} (in {symbol}) is not "
                            "lower-case letters and apostrophes"
                        )
                elif slot.group(1) not in grammar:
                    raise ValueError(
                        f"grammar slot {token} (in {symbol}) is undefined"
                    )
                else:
                    visit(slot.group(1), path + (symbol,))

    visit(start, ())


class GrammarSentenceGenerator:
    """Draws sentences from a small template grammar (module docstring).

    Has the interface of
    :class:`~s3l_plugin.data.sentences.SentenceGenerator`: ``sentence(rng)``
    gives an upper-case LibriSpeech-style transcript.

    Arguments
    ---------
    min_words : int
        Fewest words in a sentence (shorter draws are redrawn).
    max_words : int
        Most words in a sentence (longer draws are redrawn).
    grammar : dict, optional
        Nonterminal -> list of alternatives; default :data:`GRAMMAR`.

    Example
    -------
    >>> import random
    >>> generator = GrammarSentenceGenerator()
    >>> sentence = generator.sentence(random.Random(0))
    >>> 4 <= len(sentence.split()) <= 14, sentence.isupper()
    (True, True)
    >>> set(sentence.split()) <= set(generator.vocabulary())
    True
    """

    def __init__(self, min_words=4, max_words=14, grammar=None):
        self.grammar = GRAMMAR if grammar is None else grammar
        _check_grammar(self.grammar, START)
        if not 1 <= min_words <= max_words:
            raise ValueError(
                f"need 1 <= min_words <= max_words, got {min_words} and "
                f"{max_words}"
            )
        self.min_words = min_words
        self.max_words = max_words

    def sentence(self, rng):
        """Draws one sentence.

        Arguments
        ---------
        rng : random.Random
            Source of randomness (the sentence is a function of its state).

        Returns
        -------
        str
            An upper-case transcript of ``min_words`` to ``max_words``
            words.
        """
        for _ in range(1000):
            words = []
            _expand(self.grammar, START, rng, words)
            if self.min_words <= len(words) <= self.max_words:
                return " ".join(_articles(words)).upper()
        raise ValueError(
            f"the grammar gave no sentence of {self.min_words} to "
            f"{self.max_words} words in 1000 draws"
        )

    def vocabulary(self):
        """Every word the grammar can produce.

        Returns
        -------
        list of str
            Upper-case words, sorted.
        """
        words = set()
        for alternatives in self.grammar.values():
            for alternative in alternatives:
                words.update(
                    token
                    for token in alternative.split()
                    if not _SLOT.match(token)
                )
        if "a" in words:
            words.add("an")
        return sorted(word.upper() for word in words)


def _articles(words):
    """ "a" before a word that starts with a vowel letter becomes "an"."""
    return [
        "an"
        if word == "a"
        and index + 1 < len(words)
        and words[index + 1][0] in _VOWELS
        else word
        for index, word in enumerate(words)
    ]
