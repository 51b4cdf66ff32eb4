"""Lexicon-constrained CTC beam search with a word n-gram, as the paper.

The paper decodes with flashlight's lexicon decoder and a KenLM 4-gram;
torchaudio's :func:`torchaudio.models.decoder.ctc_decoder` is that decoder
(its KenLM comes with the ``flashlight-text`` package). Hypotheses are
spelled through a lexicon (every word a trie path of CTC characters), so
only lexicon words come out, and each finished word adds

    ``lm_weight * log10 P_LM(word | history) + word_score``

to the hypothesis score, whose acoustic part is the sum of the CTC
model's natural-log probabilities. KenLM scores are log10: the paper's
constants (LM weight 3.23, word score -0.4, tuned for this decoder on
LibriSpeech) apply here as they are. SpeechBrain's lexicon-free
``CTCBeamSearcher`` instead multiplies natural-log LM scores by its
``alpha``: the same weight there counts ln(10) = 2.3 times as much (3.23
here is alpha = 1.40 there).

The best weights still depend on how peaked the acoustic model's outputs
are and on the LM: tune them on dev WER (:func:`tune_decoder`). On
simulated emissions of 60 held-out grammar sentences with many letter
errors (as in ``tests/test_decoding.py``, 3 seeds), LM weight 1.0 with
word score 0 took the WER of the lexicon alone from 8.9-13.3 % to
5.0-6.8 %, while the paper's pair raised it to 12.7-16.4 %.

Typical use, from the training transcripts (see :func:`build_lexicon_lm`)::

    files = build_lexicon_lm(train_transcripts, "results/lm", order=3)
    search = LexiconBeamSearch(CharVocabulary().tokens, **files)
    lm_weight, word_score, dev_wer = tune_decoder(
        search, dev_log_probs, dev_lengths, dev_references)
    search = search.with_weights(lm_weight, word_score)
    words = search(log_probs, lengths)  # list of word lists
"""

import collections
import copy
import itertools
import os

import torch

from s3l_plugin.ngram import UNK, BackoffNgramLM
from s3l_plugin.vocabulary import CharVocabulary

# The paper's weights for this decoder (flashlight, KenLM log10 scores).
PAPER_LM_WEIGHT = 3.23
PAPER_WORD_SCORE = -0.4


def write_lexicon(words, path, tokens=None):
    """Writes a lexicon: each word, then its characters.

    The spelling follows the CTC character vocabulary (upper-case
    letters, apostrophe). The word separator ``|`` is the decoder's
    silence token, free between words; it does not close each spelling
    as in flashlight's wav2letter lexicons, whose targets end with ``|``:
    ours (``CharVocabulary.encode``) do not, and a closing ``|`` then has
    to take a frame the model gave to another token (measured: one-hot
    emissions of "A CAT" decoded as "A A").

    Arguments
    ---------
    words : iterable of str
        Words (upper-case, as in the transcripts); duplicates are written
        once, in sorted order.
    path : str
        Output file.
    tokens : list of str, optional
        The CTC tokens; default: :class:`~s3l_plugin.vocabulary.CharVocabulary`'s.

    Returns
    -------
    list of str
        The words written.

    Raises
    ------
    ValueError
        If a word has a character that is not a token.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "lexicon.txt")
    >>> write_lexicon(["IT'S", "A", "A"], path)
    ['A', "IT'S"]
    >>> print(open(path).read(), end="")
    A A
    IT'S I T ' S
    """
    vocab = CharVocabulary()
    tokens = vocab.tokens if tokens is None else tokens
    spellable = set(tokens) - {vocab.BLANK, vocab.SEPARATOR}
    words = sorted(set(words))
    lines = []
    for word in words:
        unknown = sorted(set(word) - spellable)
        if unknown or not word:
            raise ValueError(
                f"lexicon word {word!r} has characters outside the CTC "
                f"tokens: {unknown}"
            )
        lines.append(f"{word} {' '.join(word)}")
    with open(path, "w", encoding="utf-8") as lexicon_file:
        lexicon_file.write("\n".join(lines) + "\n")
    return words


def build_lexicon_lm(transcripts, out_dir, order=3):
    """Writes the decoder's lexicon and n-gram from training transcripts.

    Arguments
    ---------
    transcripts : iterable of str
        Training transcripts (upper-case words).
    out_dir : str
        Folder for ``lexicon.txt`` and ``lm_<order>gram.arpa`` (created).
    order : int
        n-gram order (3 suits a few thousand training sentences; the
        paper's LibriSpeech LM is a 4-gram).

    Returns
    -------
    dict
        ``lexicon_path`` and ``lm_path``: keyword arguments of
        :class:`LexiconBeamSearch`.

    Example
    -------
    >>> import tempfile
    >>> files = build_lexicon_lm(["A CAT SAT", "A DOG"], tempfile.mkdtemp())
    >>> sorted(files)
    ['lexicon_path', 'lm_path']
    """
    transcripts = [" ".join(t.split()) for t in transcripts if t.split()]
    os.makedirs(out_dir, exist_ok=True)
    files = lexicon_lm_files(out_dir, order)
    words = (w for t in transcripts for w in t.split())
    write_lexicon(words, files["lexicon_path"])
    lm = BackoffNgramLM.estimate(transcripts, order=order)
    lm.write_arpa(files["lm_path"])
    return files


def lexicon_lm_files(out_dir, order=3):
    """Where :func:`build_lexicon_lm` writes the lexicon and the n-gram.

    Arguments
    ---------
    out_dir : str
        The folder.
    order : int
        n-gram order.

    Returns
    -------
    dict
        ``lexicon_path`` and ``lm_path``.

    Example
    -------
    >>> lexicon_lm_files("lm")["lm_path"]
    'lm/lm_3gram.arpa'
    """
    return {
        "lexicon_path": os.path.join(out_dir, "lexicon.txt"),
        "lm_path": os.path.join(out_dir, f"lm_{order}gram.arpa"),
    }


class LexiconBeamSearch:
    """CTC beam search over lexicon words with a KenLM n-gram.

    A thin wrapper of torchaudio's ``ctc_decoder`` (flashlight's lexicon
    decoder; module docstring) for the CTC character vocabulary: blank
    ``<blank>``, word separator ``|``.

    Arguments
    ---------
    tokens : list of str
        The CTC tokens in id order, e.g. ``CharVocabulary().tokens``.
    lexicon_path : str
        Lexicon file (:func:`write_lexicon`); only its words are output.
    lm_path : str, optional
        ARPA or KenLM binary n-gram over the lexicon's words; None: no LM
        (lexicon constraint and word score only).
    beam_size : int
        Hypotheses kept after each frame (the paper: 500 on LibriSpeech;
        50 is close to it on small vocabularies and 10 times faster).
    lm_weight : float
        Weight of the log10 LM score (the paper: 3.23).
    word_score : float
        Score added per word (the paper: -0.4).
    beam_threshold : float
        Hypotheses scoring this far below the best are pruned.
    beam_size_token : int, optional
        Tokens tried per frame; None: all.

    Example
    -------
    >>> import tempfile
    >>> vocab = CharVocabulary()
    >>> files = build_lexicon_lm(["A CAT", "A DOG"], tempfile.mkdtemp())
    >>> search = LexiconBeamSearch(vocab.tokens, **files)
    >>> ids = torch.tensor(vocab.encode("A CAT"))
    >>> log_probs = torch.nn.functional.one_hot(ids, len(vocab)) * 10.0
    >>> log_probs = log_probs.float().log_softmax(-1).unsqueeze(0)
    >>> search(log_probs, torch.tensor([len(ids)]))
    [['A', 'CAT']]
    """

    def __init__(
        self,
        tokens,
        lexicon_path,
        lm_path=None,
        beam_size=50,
        lm_weight=PAPER_LM_WEIGHT,
        word_score=PAPER_WORD_SCORE,
        beam_threshold=25.0,
        beam_size_token=None,
    ):
        for name, path in (("lexicon", lexicon_path), ("LM", lm_path)):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"{name} file not found: {path}")
        self.tokens = list(tokens)
        self.lexicon_path = lexicon_path
        self.lm_path = lm_path
        self.beam_size = beam_size
        self.lm_weight = lm_weight
        self.word_score = word_score
        self.beam_threshold = beam_threshold
        self.beam_size_token = beam_size_token
        # Loaded once and shared by with_weights' searchers: KenLM reads
        # an ARPA file slowly and prints a progress bar each time.
        self._lm = None
        if lm_path is not None:
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import (
                create_word_dict,
                load_words,
            )

            # The word ids ctc_decoder gives the lexicon's words.
            word_dict = create_word_dict(load_words(lexicon_path))
            self._lm = KenLM(lm_path, word_dict)
        self.decoder = self._make_decoder()

    def _make_decoder(self):
        from torchaudio.models.decoder import ctc_decoder

        return ctc_decoder(
            lexicon=self.lexicon_path,
            tokens=self.tokens,
            lm=self._lm,
            nbest=1,
            beam_size=self.beam_size,
            beam_size_token=self.beam_size_token,
            beam_threshold=self.beam_threshold,
            lm_weight=self.lm_weight,
            word_score=self.word_score,
            # Out-of-lexicon words are never hypothesised.
            unk_score=float("-inf"),
            sil_score=0.0,
            blank_token=CharVocabulary.BLANK,
            sil_token=CharVocabulary.SEPARATOR,
            unk_word=UNK,
        )

    def with_weights(self, lm_weight, word_score):
        """The same search with another LM weight and word score.

        Arguments
        ---------
        lm_weight : float
            Weight of the log10 LM score.
        word_score : float
            Score added per word.

        Returns
        -------
        LexiconBeamSearch
            A new searcher sharing this one's loaded LM.
        """
        search = copy.copy(self)
        search.lm_weight = lm_weight
        search.word_score = word_score
        search.decoder = search._make_decoder()
        return search

    def __call__(self, log_probs, lengths):
        """Decodes a batch of CTC outputs.

        Arguments
        ---------
        log_probs : torch.Tensor
            ``(batch, frames, tokens)`` log-probabilities (natural log,
            e.g. the CTC head's ``log_softmax``), any device and float
            type.
        lengths : torch.Tensor
            ``(batch,)`` valid frames per utterance (frames past it are
            padding and ignored).

        Returns
        -------
        list of list of str
            The best hypothesis' words per utterance.
        """
        if log_probs.dim() != 3 or log_probs.size(-1) != len(self.tokens):
            raise ValueError(
                f"log_probs must be (batch, frames, {len(self.tokens)}), got "
                f"{tuple(log_probs.shape)}"
            )
        lengths = torch.as_tensor(lengths).reshape(-1)
        if lengths.numel() != log_probs.size(0):
            raise ValueError(
                f"{lengths.numel()} lengths for a batch of {log_probs.size(0)}"
            )
        if (lengths < 0).any() or (lengths > log_probs.size(1)).any():
            raise ValueError(
                f"lengths {lengths.tolist()} outside 0..{log_probs.size(1)}"
            )
        emissions = log_probs.detach().to("cpu", torch.float32).contiguous()
        results = self.decoder(emissions, lengths.to("cpu", torch.int32))
        return [list(best[0].words) if best else [] for best in results]


def word_error_rate(hypotheses, references):
    """Word error rate in percent (SpeechBrain's edit distance).

    Arguments
    ---------
    hypotheses : list of list of str
        Words per utterance.
    references : list of str or list of list of str
        Reference transcripts (strings are split on white space).

    Returns
    -------
    float
        ``100 * (substitutions + deletions + insertions) / reference
        words``.

    Example
    -------
    >>> word_error_rate([["A", "CAT"]], ["A BAT"])
    50.0
    """
    from speechbrain.utils.edit_distance import accumulatable_wer_stats

    references = [r.split() if isinstance(r, str) else r for r in references]
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(hypotheses)} hypotheses for {len(references)} references"
        )
    stats = accumulatable_wer_stats(
        references, hypotheses, collections.Counter()
    )
    return float(stats["WER"])


def tune_decoder(
    search,
    log_probs_list,
    lengths_list,
    references,
    lm_weights=(0.5, 1.0, 2.0, 3.23, 4.0),
    word_scores=(-1.0, -0.4, 0.0, 1.0),
):
    """Grid search of LM weight and word score on dev WER.

    Arguments
    ---------
    search : LexiconBeamSearch
        The searcher whose other settings are kept.
    log_probs_list : list of torch.Tensor
        Dev batches of ``(batch, frames, tokens)`` log-probabilities.
    lengths_list : list of torch.Tensor
        Their ``(batch,)`` valid frame counts.
    references : list of str
        Reference transcripts, all batches' utterances in order.
    lm_weights : sequence of float
        LM weights tried.
    word_scores : sequence of float
        Word scores tried.

    Returns
    -------
    tuple
        ``(lm_weight, word_score, wer)``: the pair with the lowest dev WER
        (percent); among ties, the first in grid order (LM weight, then
        word score).
    """
    if len(log_probs_list) != len(lengths_list):
        raise ValueError("log_probs_list and lengths_list differ in length")
    best = None
    for lm_weight, word_score in itertools.product(lm_weights, word_scores):
        candidate = search.with_weights(lm_weight, word_score)
        hypotheses = []
        for log_probs, lengths in zip(log_probs_list, lengths_list):
            hypotheses += candidate(log_probs, lengths)
        wer = word_error_rate(hypotheses, references)
        if best is None or wer < best[2]:
            best = (lm_weight, word_score, wer)
    return best
