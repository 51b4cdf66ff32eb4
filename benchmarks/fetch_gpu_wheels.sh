#!/usr/bin/env bash
# Run HERE (with network) before a GPU check: downloads the wheels that the
# lent GPU machine's image lacks (it has torch, torchaudio, numpy, scipy,
# sentencepiece, tqdm, ... but not SpeechBrain and its YAML/audio packages)
# into .whl/, which travels with the working tree and stays out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLATFORMS=()
for n in 17 24 27 28 31 34; do
    PLATFORMS+=(--platform "manylinux_2_${n}_x86_64")
done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform any)
for package in speechbrain==1.1.2 hyperpyyaml==1.2.3 ruamel.yaml \
        ruamel.yaml.clib soundfile cffi pycparser rapidfuzz \
        espeakng-loader; do
    python3 -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
        -d .whl "$package"
done
ls .whl
