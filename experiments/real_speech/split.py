"""The real-speech split of Mini LibriSpeech ``train-clean-5``, by speaker.

Every real-speech figure of the project is measured on this split, so that
figures are comparable (docs/EXPERIMENTS.md):

- ``test-clean``: speakers 1970, 4680, 2136, 3664 (held out);
- ``dev-clean``: speakers 5789, 6848 (held out);
- ``train-clean-100``: the other 22 speakers (1,283 utterances, 4.45 h),
  the unlabelled pretraining audio;
- ``train-1h``: the first 13 utterances (in utterance-ID order) of each of
  those 22 speakers (286 utterances, about 1 h of labels);
- ``train-10min``: the first 2 of each (44 utterances, about 9 min).

The split is written in LibriSpeech's layout (``<split>/<speaker>/<chapter>/``
with the chapter's ``.trans.txt`` holding only the selected lines), the
audio as symbolic links to the source files, so the recipes read it with
``--data_folder``::

    python experiments/real_speech/split.py SOURCE DEST

Example
-------
>>> import tempfile
>>> src, dst = tempfile.mkdtemp(), tempfile.mkdtemp()
>>> for spk in ("19", "1970"):
...     os.makedirs(os.path.join(src, spk, "7"))
...     ids = [f"{spk}-7-{i:04d}" for i in range(3)]
...     for utt in ids:
...         open(os.path.join(src, spk, "7", utt + ".flac"), "w").close()
...     with open(os.path.join(src, spk, "7", f"{spk}-7.trans.txt"), "w") as f:
...         f.writelines(f"{utt} HELLO\\n" for utt in ids)
>>> sorted(build_split(src, dst, test=["1970"], dev=[]).items())
[('test-clean', 3), ('train-10min', 2), ('train-1h', 3), ('train-clean-100', 3)]
"""

import argparse
import glob
import os
import sys

TEST_SPEAKERS = ("1970", "4680", "2136", "3664")
DEV_SPEAKERS = ("5789", "6848")
LABELLED_PER_SPEAKER = {"train-1h": 13, "train-10min": 2}


def read_speaker(speaker_folder):
    """Returns ``[(utterance_id, chapter, transcript)]`` in ID order."""
    lines = []
    for path in glob.glob(os.path.join(speaker_folder, "*", "*.trans.txt")):
        chapter = os.path.basename(os.path.dirname(path))
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                utt_id, _, words = line.strip().partition(" ")
                if utt_id:
                    lines.append((utt_id, chapter, words))
    return sorted(lines)


def write_split(source, dest, split, speaker, utterances):
    """Links the audio of ``utterances`` and writes their transcripts."""
    by_chapter = {}
    for utt_id, chapter, words in utterances:
        by_chapter.setdefault(chapter, []).append((utt_id, words))
    for chapter, lines in by_chapter.items():
        folder = os.path.join(dest, split, speaker, chapter)
        os.makedirs(folder, exist_ok=True)
        for utt_id, _ in lines:
            link = os.path.join(folder, utt_id + ".flac")
            target = os.path.join(source, speaker, chapter, utt_id + ".flac")
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(target), link)
        trans = os.path.join(folder, f"{speaker}-{chapter}.trans.txt")
        with open(trans, "w", encoding="utf-8") as stream:
            stream.writelines(f"{u} {w}\n" for u, w in lines)


def build_split(source, dest, test=TEST_SPEAKERS, dev=DEV_SPEAKERS):
    """Writes the split of ``source`` into ``dest``.

    Arguments
    ---------
    source : str
        A LibriSpeech-layout split folder (``.../train-clean-5``).
    dest : str
        The new corpus root; the splits become its sub-folders.
    test, dev : sequence of str
        Held-out speakers; every other speaker is training data.

    Returns
    -------
    dict
        Utterances written per split.
    """
    counts = {}
    speakers = sorted(
        name
        for name in os.listdir(source)
        if os.path.isdir(os.path.join(source, name))
    )
    for speaker in speakers:
        lines = read_speaker(os.path.join(source, speaker))
        if speaker in test:
            chosen = {"test-clean": lines}
        elif speaker in dev:
            chosen = {"dev-clean": lines}
        else:
            chosen = {"train-clean-100": lines}
            for split, count in LABELLED_PER_SPEAKER.items():
                chosen[split] = lines[:count]
        for split, utterances in chosen.items():
            write_split(source, dest, split, speaker, utterances)
            counts[split] = counts.get(split, 0) + len(utterances)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="Mini LibriSpeech train-clean-5")
    parser.add_argument("dest", help="where to write the split")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.source):
        sys.exit(f"error: {args.source}: not a folder")
    for split, count in sorted(build_split(args.source, args.dest).items()):
        print(f"{split}: {count} utterances")


if __name__ == "__main__":
    main()
