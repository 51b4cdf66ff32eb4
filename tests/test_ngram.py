"""The Kneser-Ney n-gram estimator and its ARPA files."""

import math
import random

import pytest

from s3l_plugin.data.grammar import GrammarSentenceGenerator
from s3l_plugin.ngram import BOS, EOS, UNK, BackoffNgramLM


def _grammar_sentences(count, seed=0):
    generator = GrammarSentenceGenerator()
    rng = random.Random(seed)
    return [generator.sentence(rng) for _ in range(count)]


def _context_sums(lm):
    """P(w | h) summed over the vocabulary, for every context h of the
    model (every stored n-gram below the top order, and the empty one)."""
    predicted = sorted(lm.words - {BOS})
    contexts = [()] + [
        ngram
        for ngram in lm.log10_probs
        if len(ngram) < lm.order and ngram[-1] != EOS
    ]
    return {
        context: sum(10 ** lm.log10_prob(w, context) for w in predicted)
        for context in contexts
    }


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_sums_to_one(order, tmp_path):
    lm = BackoffNgramLM.estimate(_grammar_sentences(200), order=order)
    path = str(tmp_path / "lm.arpa")
    lm.write_arpa(path)
    sums = _context_sums(BackoffNgramLM.read_arpa(path))
    assert len(sums) >= (1 if order == 1 else 250)
    for context, total in sums.items():
        assert total == pytest.approx(1.0, abs=1e-5), context


def test_unigram_matches_modified_kneser_ney_by_hand():
    lm = BackoffNgramLM.estimate(["A CAT SAT", "A DOG SAT"], order=1)
    # Counts: A 2, CAT 1, DOG 1, SAT 2, </s> 2 (total 8); counts of
    # counts n1 = 2, n2 = 3: Y = 2 / (2 + 6) = 0.25, D1 = 1 - 2Y * 3/2 =
    # 0.25, D2 = 2 - 3Y * 0/3 = 2 is out of (0, 2): 2Y = 0.5. The
    # interpolation weight (0.25 * 2 + 0.5 * 3) / 8 = 0.25 goes to the
    # uniform over A, CAT, DOG, SAT, </s>, <unk>.
    assert 10 ** lm.log10_prob("CAT") == pytest.approx(0.75 / 8 + 0.25 / 6)
    assert 10 ** lm.log10_prob("SAT") == pytest.approx(1.5 / 8 + 0.25 / 6)
    assert 10 ** lm.log10_prob(UNK) == pytest.approx(0.25 / 6)
    assert 10 ** lm.log10_prob("ZEBRA") == pytest.approx(0.25 / 6)


def test_context_makes_the_seen_continuation_likely():
    lm = BackoffNgramLM.estimate(["THE CAT SAT ON THE MAT"] * 5, order=3)
    assert lm.log10_prob("SAT", [BOS, "THE", "CAT"]) > math.log10(0.8)
    assert lm.log10_prob("MAT", ["ON", "THE"]) > lm.log10_prob(
        "CAT", ["ON", "THE"]
    )


def test_kenlm_reads_the_file_and_scores_the_same(tmp_path):
    kenlm = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    from flashlight.lib.text.dictionary import Dictionary

    train = _grammar_sentences(150)
    lm = BackoffNgramLM.estimate(train, order=3)
    path = str(tmp_path / "lm.arpa")
    lm.write_arpa(path)
    words = sorted(lm.words)
    dictionary = Dictionary(words)
    model = kenlm.KenLM(path, dictionary)
    for sentence in _grammar_sentences(20, seed=1) + ["THE THE ZEBRA"]:
        state, total = model.start(False), 0.0
        for word in sentence.split():
            word = word if word in lm.words else UNK
            state, score = model.score(state, dictionary.get_index(word))
            total += score
        total += model.finish(state)[1]
        assert total == pytest.approx(
            lm.sentence_log10_prob(sentence), abs=1e-4
        )


def test_more_training_text_lowers_held_out_perplexity():
    dev = _grammar_sentences(100, seed=1)
    small = BackoffNgramLM.estimate(_grammar_sentences(100), order=3)
    large = BackoffNgramLM.estimate(_grammar_sentences(1000), order=3)
    assert large.perplexity(dev) < small.perplexity(dev)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="order"):
        BackoffNgramLM.estimate(["A B"], order=0)
    with pytest.raises(ValueError, match="no transcript"):
        BackoffNgramLM.estimate(["", "  "])
    with pytest.raises(ValueError, match="marker"):
        BackoffNgramLM.estimate(["A </s> B"])
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\n")
    with pytest.raises(ValueError, match="bad.arpa:5"):
        BackoffNgramLM.read_arpa(str(bad))
