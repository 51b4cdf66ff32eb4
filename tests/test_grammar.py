"""The grammar sentence design of the synthetic corpus."""

import glob
import json
import os
import random
import re

import pytest
import soundfile as sf

from s3l_plugin.data.grammar import GrammarSentenceGenerator
from s3l_plugin.data.mini_librispeech import (
    MARKER,
    generate_mini_librispeech,
    main,
)
from s3l_plugin.ngram import BackoffNgramLM
from s3l_plugin.vocabulary import CharVocabulary

# Sizes of the default demo corpus: 30 train minutes of about 2.5 s
# utterances, 3 dev minutes.
TRAIN_SENTENCES, DEV_SENTENCES = 700, 70


def _draw(seed, count):
    generator = GrammarSentenceGenerator()
    rng = random.Random(seed)
    return [generator.sentence(rng) for _ in range(count)]


def test_same_seed_same_sentences_other_seed_others():
    assert _draw(0, 50) == _draw(0, 50)
    assert _draw(0, 50) != _draw(1, 50)


def test_vocabulary_is_closed_small_and_fully_used():
    vocabulary = set(GrammarSentenceGenerator().vocabulary())
    assert 150 <= len(vocabulary) <= 400
    used = {word for s in _draw(0, 5000) for word in s.split()}
    assert used <= vocabulary
    assert len(used) >= 0.98 * len(vocabulary)


def test_every_word_is_pronounceable_and_spellable():
    vocab = CharVocabulary()
    for word in GrammarSentenceGenerator().vocabulary():
        assert re.fullmatch(r"[A-Z']+", word), word
        assert vocab.decode(vocab.encode(word)) == word


def test_sentences_have_4_to_14_words_and_correct_articles():
    for sentence in _draw(0, 2000):
        words = sentence.split()
        assert 4 <= len(words) <= 14
        for article, following in zip(words, words[1:]):
            if article in ("A", "AN"):
                assert (article == "AN") == (following[0] in "AEIOU")


def test_held_out_sentences_are_mostly_unseen():
    train = set(_draw(0, TRAIN_SENTENCES))
    dev = _draw(1, DEV_SENTENCES)
    assert sum(sentence in train for sentence in dev) <= 0.05 * len(dev)


def test_ngram_lm_predicts_held_out_sentences():
    train, dev = _draw(0, TRAIN_SENTENCES), _draw(1, DEV_SENTENCES)
    lm = BackoffNgramLM.estimate(train, order=3)
    words = sorted({w for s in train for w in s.split()})
    rng = random.Random(2)
    shuffled = [" ".join(rng.choices(words, k=len(s.split()))) for s in dev]
    dev_perplexity = lm.perplexity(dev)
    # Word strings of the same vocabulary and lengths, without grammar.
    assert dev_perplexity < lm.perplexity(shuffled) / 4
    # The context helps, not just the word frequencies.
    unigram = BackoffNgramLM.estimate(train, order=1)
    assert dev_perplexity < unigram.perplexity(dev) / 2


@pytest.mark.parametrize(
    "grammar, message",
    [
        ({"S": ["<X>"]}, "undefined"),
        ({"S": ["<X>"], "X": ["a <S>"]}, "recursive"),
        ({"S": ["hello world2"]}, "lower-case letters"),
        ({"T": ["a"]}, "start symbol"),
    ],
)
def test_bad_grammar_is_refused(grammar, message):
    with pytest.raises(ValueError, match=message):
        GrammarSentenceGenerator(grammar=grammar)


TINY = {
    "train_minutes": 0.1,
    "dev_minutes": 0.05,
    "test_minutes": 0.05,
    "train_speakers": 1,
    "dev_speakers": 1,
    "test_speakers": 1,
    "with_noise": False,
    "progress": False,
}


@pytest.fixture(scope="module")
def grammar_corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("grammar") / "corpus")
    generate_mini_librispeech(out, sentences="grammar", **TINY)
    return out


def test_corpus_transcripts_come_from_the_grammar(grammar_corpus):
    vocabulary = set(GrammarSentenceGenerator().vocabulary())
    lines = []
    for path in glob.glob(os.path.join(grammar_corpus, "*/*/*/*.trans.txt")):
        with open(path, encoding="utf-8") as trans_file:
            lines += [line.split(" ", 1)[1].split() for line in trans_file]
    assert len(lines) >= 3
    for words in lines:
        assert 4 <= len(words) <= 14
        assert set(words) <= vocabulary


def test_corpus_utterances_last_1_to_7_seconds(grammar_corpus):
    flacs = glob.glob(os.path.join(grammar_corpus, "*/*/*/*.flac"))
    for path in flacs:
        assert 1.0 <= sf.info(path).duration <= 7.0, path


def test_marker_records_the_design_and_other_designs_are_refused(
    grammar_corpus,
):
    with open(os.path.join(grammar_corpus, MARKER), encoding="utf-8") as f:
        assert json.load(f)["options"]["sentences"] == "grammar"
    # Same arguments: nothing to do.
    summary = generate_mini_librispeech(
        grammar_corpus, sentences="grammar", **TINY
    )
    assert summary["already_complete"]
    with pytest.raises(ValueError, match="sentences"):
        generate_mini_librispeech(grammar_corpus, **TINY)


def test_default_design_is_random_and_not_recorded(tmp_path):
    # Corpora generated before the option existed keep matching.
    out = str(tmp_path / "random")
    generate_mini_librispeech(out, **dict(TINY, train_minutes=0.02))
    with open(os.path.join(out, MARKER), encoding="utf-8") as marker:
        assert "sentences" not in json.load(marker)["options"]


def test_unknown_design_and_text_file_with_grammar_are_refused(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("one two three\nfour five six\nseven eight nine\n")
    with pytest.raises(ValueError, match="sentences must be one of"):
        generate_mini_librispeech(str(tmp_path / "a"), sentences="poems")
    with pytest.raises(ValueError, match="text file"):
        generate_mini_librispeech(
            str(tmp_path / "b"), text_file=str(text), sentences="grammar"
        )
    with pytest.raises(SystemExit) as exit_info:
        main(
            [str(tmp_path / "c"), "--text", str(text), "--sentences", "grammar"]
        )
    assert exit_info.value.code == 2
