"""Lexicon-constrained CTC beam search with the n-gram, on synthetic
emissions built from known transcripts."""

import random

import pytest
import torch

from s3l_plugin.ctc import greedy_decode
from s3l_plugin.data.grammar import GrammarSentenceGenerator
from s3l_plugin.decoding import (
    PAPER_LM_WEIGHT,
    PAPER_WORD_SCORE,
    LexiconBeamSearch,
    build_lexicon_lm,
    tune_decoder,
    word_error_rate,
    write_lexicon,
)
from s3l_plugin.vocabulary import CharVocabulary

pytest.importorskip("flashlight.lib.text.decoder")

VOCAB = CharVocabulary()
# "THE CAT SAT" is frequent; HAT and BAT are lexicon words in other
# contexts, so only the LM can tell "THE HAT SAT" from "THE CAT SAT".
TRAIN = (
    ["THE CAT SAT ON THE MAT"] * 6
    + ["THE CAT SAT", "A DOG SAT ON THE MAT", "THE DOG RAN HOME"] * 3
    + ["HE WORE A RED HAT", "A BAT FLEW HOME", "SHE SAW A RED HAT"]
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return build_lexicon_lm(TRAIN, str(tmp_path_factory.mktemp("lm")))


def _emissions(text, confusions=None, noise=0.5, seed=0, peak=8.0):
    """(frames, tokens) log-probabilities spelling ``text``: each token
    one frame, then a blank frame, logits ``peak`` on the token plus
    Gaussian noise. ``confusions`` maps a character position in ``text``
    to a letter given a slightly higher logit than the right one."""
    generator = torch.Generator().manual_seed(seed)
    ids = VOCAB.encode(text)
    frames = []
    for index in ids:
        frames += [index, VOCAB.blank_index]
    logits = noise * torch.randn(len(frames), len(VOCAB), generator=generator)
    logits[torch.arange(len(frames)), frames] += peak
    for position, letter in (confusions or {}).items():
        frame = 2 * position  # one token per character of text
        logits[frame, VOCAB.tokens.index(letter)] = logits[frame].max() + 1.0
    return logits.log_softmax(-1)


def _batch(emissions):
    lengths = torch.tensor([e.size(0) for e in emissions])
    padded = torch.full((len(emissions), int(lengths.max()), len(VOCAB)), -30.0)
    for row, e in enumerate(emissions):
        padded[row, : e.size(0)] = e
    return padded, lengths


def _greedy(log_probs, lengths):
    return [VOCAB.decode(ids) for ids in greedy_decode(log_probs, lengths)]


def test_defaults_are_the_papers_constants(files):
    search = LexiconBeamSearch(VOCAB.tokens, **files)
    assert (search.lm_weight, search.word_score) == (3.23, -0.4)
    assert (PAPER_LM_WEIGHT, PAPER_WORD_SCORE) == (3.23, -0.4)


def test_clean_emissions_decode_to_their_transcripts(files):
    texts = ["THE CAT SAT ON THE MAT", "A DOG SAT", "SHE SAW A RED HAT"]
    log_probs, lengths = _batch(
        [_emissions(t, seed=i) for i, t in enumerate(texts)]
    )
    search = LexiconBeamSearch(VOCAB.tokens, **files)
    assert search(log_probs, lengths) == [t.split() for t in texts]


def test_lexicon_repairs_a_confused_letter_greedy_keeps(files):
    # "THE CAT SAT" with the A of CAT heard as O: greedy writes COT.
    log_probs, lengths = _batch([_emissions("THE CAT SAT", {5: "O"})])
    assert _greedy(log_probs, lengths) == ["THE COT SAT"]
    search = LexiconBeamSearch(VOCAB.tokens, files["lexicon_path"])
    assert search(log_probs, lengths) == [["THE", "CAT", "SAT"]]


def test_lm_picks_the_likely_word_among_lexicon_words(files):
    # C heard as H: HAT is a lexicon word, only the LM prefers CAT here.
    log_probs, lengths = _batch([_emissions("THE CAT SAT", {4: "H"})])
    assert _greedy(log_probs, lengths) == ["THE HAT SAT"]
    no_lm = LexiconBeamSearch(VOCAB.tokens, files["lexicon_path"])
    assert no_lm(log_probs, lengths) == [["THE", "HAT", "SAT"]]
    with_lm = LexiconBeamSearch(VOCAB.tokens, **files)
    assert with_lm(log_probs, lengths) == [["THE", "CAT", "SAT"]]


def test_only_lexicon_words_come_out_of_noise(files):
    lexicon = {w for t in TRAIN for w in t.split()}
    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(4, 60, len(VOCAB), generator=generator)
    log_probs = logits.log_softmax(-1)
    search = LexiconBeamSearch(VOCAB.tokens, **files)
    hypotheses = search(log_probs, torch.tensor([60, 45, 30, 10]))
    assert len(hypotheses) == 4
    assert any(hypotheses)
    for words in hypotheses:
        assert set(words) <= lexicon


def test_padding_frames_are_ignored(files):
    short = _emissions("A DOG SAT", seed=1)
    # The padding spells more words: decoding must stop at the length.
    padding = _emissions("A DOG SAT ON THE MAT", seed=2)[short.size(0) :]
    padded = torch.cat([short, padding]).unsqueeze(0)
    long = _emissions("THE CAT SAT ON THE MAT", seed=3).unsqueeze(0)
    log_probs = torch.cat([padded, long[:, : padded.size(1)]], dim=0)
    lengths = torch.tensor([short.size(0), padded.size(1)])
    search = LexiconBeamSearch(VOCAB.tokens, **files)
    alone = search(short.unsqueeze(0), torch.tensor([short.size(0)]))
    assert search(log_probs, lengths)[0] == alone[0] == ["A", "DOG", "SAT"]
    assert search(padded, torch.tensor([padded.size(1)]))[0] == (
        "A DOG SAT ON THE MAT".split()
    )


def test_float16_and_long_lengths_are_accepted(files):
    log_probs, lengths = _batch([_emissions("THE DOG RAN HOME")])
    search = LexiconBeamSearch(VOCAB.tokens, **files)
    assert search(log_probs.half(), lengths.long()) == [
        ["THE", "DOG", "RAN", "HOME"]
    ]


def test_tuning_picks_a_weight_that_uses_the_lm(files):
    texts = ["THE CAT SAT", "THE CAT SAT ON THE MAT", "A DOG SAT ON THE MAT"]
    confusions = [{4: "H"}, {4: "H", 19: "H"}, {}]
    dev = [
        _emissions(t, c, seed=i)
        for i, (t, c) in enumerate(zip(texts, confusions))
    ]
    log_probs, lengths = _batch(dev)
    search = LexiconBeamSearch(VOCAB.tokens, **files)
    no_lm_wer = tune_decoder(
        search, [log_probs], [lengths], texts, (0.0,), (0.0,)
    )[2]
    assert no_lm_wer > 0
    lm_weight, word_score, wer = tune_decoder(
        search,
        [log_probs[:2], log_probs[2:]],
        [lengths[:2], lengths[2:]],
        texts,
        lm_weights=(0.0, 1.0, 3.23),
        word_scores=(-0.4, 0.0),
    )
    assert wer == 0.0 < no_lm_wer
    assert lm_weight > 0
    # Ties go to the first in grid order.
    assert word_score == -0.4
    tuned = search.with_weights(lm_weight, word_score)
    assert tuned(log_probs, lengths) == [t.split() for t in texts]
    assert (search.lm_weight, search.word_score) == (3.23, -0.4)


def test_word_error_rate_counts_edits():
    assert word_error_rate([["A", "CAT"], []], ["A BAT", "NO"]) == (
        pytest.approx(200 / 3)
    )
    with pytest.raises(ValueError, match="references"):
        word_error_rate([["A"]], [])


def test_bad_input_is_refused(files, tmp_path):
    search = LexiconBeamSearch(VOCAB.tokens, **files)
    with pytest.raises(ValueError, match="frames, 29"):
        search(torch.zeros(1, 5, 30), torch.tensor([5]))
    with pytest.raises(ValueError, match="outside"):
        search(torch.zeros(1, 5, 29), torch.tensor([6]))
    with pytest.raises(ValueError, match="lengths for a batch"):
        search(torch.zeros(2, 5, 29), torch.tensor([5]))
    with pytest.raises(FileNotFoundError, match="LM file"):
        LexiconBeamSearch(
            VOCAB.tokens, files["lexicon_path"], str(tmp_path / "none.arpa")
        )
    with pytest.raises(ValueError, match="outside the CTC tokens"):
        write_lexicon(["R2D2"], str(tmp_path / "lexicon.txt"))


def _noisy_emissions(text, rng, generator, error_rate):
    """Emissions of ``text`` where a letter is heard as another letter
    (rate ``error_rate``) or missed (half that rate)."""
    ids = VOCAB.encode(text)
    frames = []
    for index in ids:
        frames += [index, VOCAB.blank_index]
    logits = torch.randn(len(frames), len(VOCAB), generator=generator)
    logits[torch.arange(len(frames)), frames] += 6.0
    letters = range(VOCAB.tokens.index("A"), len(VOCAB))
    for frame in range(0, len(frames), 2):
        if frames[frame] not in letters:
            continue
        draw = rng.random()
        if draw < error_rate:
            wrong = rng.choice(letters)
        elif draw < 1.5 * error_rate:
            wrong = VOCAB.blank_index
        else:
            continue
        logits[frame, wrong] = logits[frame].max() + rng.uniform(0.1, 1.5)
    return logits.log_softmax(-1)


def test_grammar_lm_lowers_wer_on_held_out_sentences(tmp_path):
    # Lexicon and LM from 700 training sentences; 60 held-out ones with
    # 45 % of letters heard wrong and 22 % missed.
    sentences = GrammarSentenceGenerator()
    rng = random.Random(0)
    train = [sentences.sentence(rng) for _ in range(700)]
    test = [sentences.sentence(rng) for _ in range(60)]
    files = build_lexicon_lm(train, str(tmp_path), order=3)
    generator = torch.Generator().manual_seed(0)
    log_probs, lengths = _batch(
        [_noisy_emissions(t, rng, generator, 0.45) for t in test]
    )
    greedy = word_error_rate(
        [t.split() for t in _greedy(log_probs, lengths)], test
    )
    lexicon_only = LexiconBeamSearch(
        VOCAB.tokens, files["lexicon_path"], word_score=0.0
    )
    with_lm = LexiconBeamSearch(
        VOCAB.tokens, **files, lm_weight=1.0, word_score=0.0
    )
    lexicon_wer = word_error_rate(lexicon_only(log_probs, lengths), test)
    lm_wer = word_error_rate(with_lm(log_probs, lengths), test)
    assert lexicon_wer < greedy / 3
    assert lm_wer < 0.75 * lexicon_wer
