"""CTC vocabularies on SpeechBrain's encoders: characters and sub-words."""

import logging

import pytest
from speechbrain.tokenizers.SentencePiece import SentencePiece

from s3l_plugin.vocabulary import CharVocabulary, SubwordVocabulary


def test_char_vocabulary_round_trip():
    vocab = CharVocabulary()
    text = "HE SAID IT'S A DOG"
    ids = vocab.encode(text)
    assert len(vocab) == 29
    assert vocab.blank_index not in ids
    assert vocab.decode(ids) == text
    # Lower case in, upper case out; runs of spaces collapse.
    assert vocab.decode(vocab.encode("  he  said ")) == "HE SAID"
    assert len(set(vocab.ctc_vocab_list())) == 29


def test_char_vocabulary_unknown_characters():
    with pytest.raises(ValueError, match="'!'"):
        CharVocabulary().encode("HELLO!")
    with pytest.raises(ValueError, match="'|'"):
        CharVocabulary().encode("A|B")


def test_char_vocabulary_drop_unknown_warns(caplog):
    vocab = CharVocabulary(unknown="drop")
    with caplog.at_level(logging.WARNING):
        ids = vocab.encode("HI! YOU!")
        vocab.encode("YES!")
    assert vocab.decode(ids) == "HI YOU"
    assert sum("'!'" in record.message for record in caplog.records) == 1


def test_sentencepiece_vocabulary_round_trip(tmp_path):
    texts = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG", "IT'S A CAT"] * 10
    csv_file = tmp_path / "train.csv"
    rows = [f"u{i},{text}" for i, text in enumerate(texts)]
    csv_file.write_text("ID,wrd\n" + "\n".join(rows) + "\n")
    tokenizer = SentencePiece(
        str(tmp_path / "sp"),
        20,
        annotation_train=str(csv_file),
        annotation_read="wrd",
        model_type="bpe",
    )
    vocab = SubwordVocabulary(tokenizer)
    assert len(vocab) == 21
    ids = vocab.encode("the dog sat on the cat")
    assert min(ids) >= 1  # 0 is the blank
    assert vocab.decode([0] + ids + [0]) == "THE DOG SAT ON THE CAT"
    assert len(vocab.ctc_vocab_list()) == len(vocab)
