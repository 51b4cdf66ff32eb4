"""Duration buckets of the recipes' dynamic batches."""

import pytest
from speechbrain.dataio.dataset import DynamicItemDataset

from s3l_plugin.data.batching import (
    make_train_sampler,
    quantile_bucket_boundaries,
)


def _dataset(durations):
    return DynamicItemDataset(
        {f"utt{i}": {"duration": d} for i, d in enumerate(durations)}
    )


def _hparams(**overrides):
    return {
        "dynamic_batching": True,
        "dynamic_batch_sampler": {
            "max_batch_length": 200.0,
            "num_buckets": 6,
            "shuffle": True,
            "batch_ordering": "random",
        },
        **overrides,
    }


# Two clusters, 2 s and 14 s, as short and long LibriSpeech utterances.
DURATIONS = [2.0 + 0.01 * i for i in range(60)] + [
    14.0 + 0.01 * i for i in range(60)
]


def test_boundaries_are_increasing_quantiles_ending_at_the_longest():
    boundaries = quantile_bucket_boundaries(DURATIONS, 6)
    assert boundaries == sorted(boundaries) and len(boundaries) == 6
    assert boundaries[-1] == max(DURATIONS)
    assert boundaries[1] < 3.0 < boundaries[2] < 14.0 <= boundaries[3]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="no durations"):
        quantile_bucket_boundaries([], 4)
    with pytest.raises(ValueError, match="num_buckets"):
        quantile_bucket_boundaries([1.0], 0)


def _padded_fraction(sampler, durations):
    padded = real = 0.0
    for batch in sampler:
        lengths = [durations[int(i)] for i in batch]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return 1 - real / padded


def test_quantile_buckets_never_mix_short_and_long_utterances():
    dataset = _dataset(DURATIONS)
    sampler = make_train_sampler(_hparams(), dataset)
    batches = list(sampler)
    assert sorted(int(i) for b in batches for i in b) == list(range(120))
    for batch in batches:
        kinds = {DURATIONS[int(i)] > 10 for i in batch}
        assert len(kinds) == 1, "a batch mixes 2 s and 14 s utterances"
    lognormal = make_train_sampler(_hparams(quantile_buckets=False), dataset)
    # SpeechBrain's own boundaries (the first at 24 s for 200 s batches)
    # put both clusters into one bucket.
    assert _padded_fraction(sampler, DURATIONS) < 0.03
    assert _padded_fraction(lognormal, DURATIONS) > 0.2


def test_given_bucket_boundaries_are_kept_and_fixed_batches_need_none():
    hparams = _hparams()
    hparams["dynamic_batch_sampler"] = {
        "max_batch_length": 60.0,
        "bucket_boundaries": [60.0],
    }
    sampler = make_train_sampler(hparams, _dataset(DURATIONS))
    assert sampler._bucket_boundaries.tolist() == [60.0]
    assert (
        make_train_sampler(
            _hparams(dynamic_batching=False, batch_size=4), _dataset([1.0])
        )
        is None
    )


def _real_seconds_per_batch(sampler, durations):
    batches = list(sampler)
    return sum(durations[int(i)] for b in batches for i in b) / len(batches)


@pytest.mark.parametrize("max_batch_ex", [None, 5])
def test_batch_count_is_speechbrains(max_batch_ex):
    import numpy as np
    from speechbrain.dataio.sampler import DynamicBatchSampler

    from s3l_plugin.data.batching import count_batches

    rng = np.random.default_rng(0)
    durations = np.concatenate([rng.uniform(1, 20, 500), [40.0]])
    lengths = durations.tolist()
    for limit in (30.0, 97.5, 200.0):
        for boundaries in ([35.0], [3.0, 7.5, 12.0, 20.0]):
            sampler = DynamicBatchSampler(
                lengths,
                limit,
                bucket_boundaries=boundaries,
                lengths_list=lengths,
                max_batch_ex=max_batch_ex,
            )
            assert count_batches(
                durations, boundaries, limit, max_batch_ex
            ) == len(list(sampler))


def test_equal_data_per_step_gives_speechbrains_real_speech_per_batch():
    """Quantile buckets pad less; the option lowers the limit so that a
    micro-batch carries the real speech of SpeechBrain's buckets."""
    import numpy as np

    durations = np.random.default_rng(1).uniform(1.5, 20, 1500).tolist()
    dataset = _dataset(durations)
    speechbrain = make_train_sampler(_hparams(quantile_buckets=False), dataset)
    quantile = make_train_sampler(_hparams(), dataset)
    equal = make_train_sampler(_hparams(equal_data_per_step=True), dataset)
    wanted = _real_seconds_per_batch(speechbrain, durations)
    assert _real_seconds_per_batch(quantile, durations) > 1.1 * wanted
    assert _real_seconds_per_batch(equal, durations) == pytest.approx(
        wanted, rel=0.01
    )
    assert len(equal) == len(speechbrain)
    assert equal._max_batch_length < 200.0
    # Still quantile buckets: less padding than SpeechBrain's.
    assert _padded_fraction(equal, durations) < 0.5 * _padded_fraction(
        speechbrain, durations
    )
