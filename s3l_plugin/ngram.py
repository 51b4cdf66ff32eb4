"""Word n-gram language model: estimation, ARPA files, perplexity.

The lexicon decoder (:mod:`s3l_plugin.decoding`) scores words with a KenLM
n-gram, as the paper does. This module estimates that n-gram from the
training transcripts with interpolated modified Kneser-Ney smoothing
(Chen & Goodman, 1999, the smoothing of KenLM's ``lmplz``) and writes it
as an ARPA file, which KenLM loads directly.

Why it is written here: KenLM's estimator ``lmplz`` is a C++ program
(Boost, CMake) that its pip package does not include, and the pip-installable
estimator we found, ``arpabo`` 0.3.0, writes ARPA files whose probabilities
do not sum to one: on a 300-sentence toy corpus, trigram contexts summed to
between 0.01 and 1.99 (max |sum - 1| of 0.99 with Good-Turing, 0.46 with
Kneser-Ney, 0.30-0.74 with Katz backoff), since its backoff weights are
fixed at 1. The estimator here is small, exact (every context sums to one,
a test checks it) and fast enough for transcripts of a few hours of speech.

In an ARPA file, an interpolated model is written in backoff form: a seen
n-gram ``h w`` gets its interpolated probability and a context ``h`` gets
its interpolation weight ``gamma(h)`` as backoff weight; an unseen ``h w``
is then ``gamma(h) p(w | h')``, the same value as the interpolation.
"""

import math
from collections import Counter, defaultdict

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# ARPA's log10 probability of <s>, which is never predicted.
_NEVER = -99.0


def _discounts(counts):
    """Modified Kneser-Ney discounts (D1, D2, D3+) of one order's counts.

    Chen & Goodman's estimates from the counts of counts. Tiny corpora
    can lack counts of 1-4 or give a discount outside (0, k) for count k:
    then the discount falls back to ``k * Y`` (Y: absolute discounting's
    estimate, 0.5 when undefined), kept inside (0, k).
    """
    of_counts = Counter(min(count, 4) for count in counts.values())
    n1, n2, n3, n4 = (of_counts[k] for k in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
    discounts = []
    for k, (n_k, n_next) in enumerate(((n1, n2), (n2, n3), (n3, n4)), 1):
        discount = k - (k + 1) * y * n_next / n_k if n_k else 0.0
        if not 0.0 < discount < k:
            discount = min(max(k * y, 0.05), k - 0.05)
        discounts.append(discount)
    return tuple(discounts)


class BackoffNgramLM:
    """A word n-gram in ARPA backoff form, with scoring.

    Build one with :meth:`estimate` (from transcripts) or :meth:`read_arpa`;
    write it with :meth:`write_arpa`. Scores are log10 probabilities, as
    in ARPA files and KenLM. Words outside the vocabulary score as
    ``<unk>``.

    Arguments
    ---------
    log10_probs : dict
        n-gram tuple -> log10 probability, every order.
    log10_backoffs : dict
        context tuple -> log10 backoff weight (absent: 0).

    Example
    -------
    >>> lm = BackoffNgramLM.estimate(["A CAT SAT", "A DOG SAT"], order=2)
    >>> lm.order, sorted(lm.words)
    (2, ['</s>', '<s>', '<unk>', 'A', 'CAT', 'DOG', 'SAT'])
    >>> round(10 ** lm.log10_prob("SAT", ["CAT"]), 3)
    0.611
    >>> lm.perplexity(["A CAT SAT"]) < lm.perplexity(["SAT A CAT"])
    True
    """

    def __init__(self, log10_probs, log10_backoffs):
        self.log10_probs = dict(log10_probs)
        self.log10_backoffs = dict(log10_backoffs)
        self.order = max(len(ngram) for ngram in self.log10_probs)
        self.words = {ngram[0] for ngram in self.log10_probs if len(ngram) == 1}
        for special in (BOS, EOS, UNK):
            if special not in self.words:
                raise ValueError(f"the n-gram model has no {special} unigram")

    @classmethod
    def estimate(cls, sentences, order=4):
        """Interpolated modified Kneser-Ney estimate from sentences.

        Arguments
        ---------
        sentences : iterable of str
            Transcripts, words separated by white space (used as they are:
            normalise the case first).
        order : int
            Longest n-gram.

        Returns
        -------
        BackoffNgramLM
            The model; every word of ``sentences`` is in its vocabulary.

        Raises
        ------
        ValueError
            On an order below 1, no word at all, or a word that is one of
            the markers ``<s>``, ``</s>``, ``<unk>``.
        """
        if order < 1:
            raise ValueError(f"the n-gram order must be at least 1: {order}")
        raw = [Counter() for _ in range(order + 1)]  # raw[n]: n-grams
        for sentence in sentences:
            words = sentence.split()
            if not words:
                continue
            for word in words:
                if word in (BOS, EOS, UNK):
                    raise ValueError(
                        f"transcript word {word!r} is an n-gram marker"
                    )
            tokens = [BOS] + words + [EOS]
            for n in range(1, order + 1):
                for start in range(len(tokens) - n + 1):
                    raw[n][tuple(tokens[start : start + n])] += 1
        if not raw[1]:
            raise ValueError("no transcript holds a word")

        # Kneser-Ney's counts: the highest order counts n-grams; a lower
        # order counts the distinct words seen before an n-gram (how many
        # contexts it continues), except after <s>, where nothing can
        # precede and the raw count stays.
        counts = {order: raw[order]}
        for n in range(order - 1, 0, -1):
            continuations = Counter(ngram[1:] for ngram in raw[n + 1])
            counts[n] = Counter(
                {
                    ngram: raw[n][ngram]
                    if ngram[0] == BOS
                    else continuations[ngram]
                    for ngram in raw[n]
                }
            )
        counts[1].pop((BOS,), None)
        counts[1].setdefault((UNK,), 0)

        log10_probs, log10_backoffs = {(BOS,): _NEVER}, {}
        # Uniform below the unigrams: every word but <s> (which is never
        # predicted), <unk> included.
        lower = {(): 1.0 / len(counts[1])}
        for n in range(1, order + 1):
            discounts = _discounts(
                {g: c for g, c in counts[n].items() if c > 0}
            )
            totals = defaultdict(int)
            followers = defaultdict(lambda: [0, 0, 0])
            for ngram, count in counts[n].items():
                totals[ngram[:-1]] += count
                if count > 0:
                    followers[ngram[:-1]][min(count, 3) - 1] += 1
            gammas = {
                context: sum(
                    d * f for d, f in zip(discounts, followers[context])
                )
                / total
                for context, total in totals.items()
            }
            probs = {}
            for ngram, count in counts[n].items():
                context = ngram[:-1]
                discounted = 0.0
                if count > 0:
                    discounted = count - discounts[min(count, 3) - 1]
                lower_prob = lower[ngram[1:]] if n > 1 else lower[()]
                probs[ngram] = (
                    discounted / totals[context] + gammas[context] * lower_prob
                )
                log10_probs[ngram] = math.log10(probs[ngram])
            for context, gamma in gammas.items():
                if context:
                    log10_backoffs[context] = math.log10(gamma)
            lower = probs
        return cls(log10_probs, log10_backoffs)

    def log10_prob(self, word, context=()):
        """log10 P(word | context), backing off as KenLM does.

        Arguments
        ---------
        word : str
            The predicted word (``<unk>`` if unknown).
        context : sequence of str
            Preceding words, oldest first (``<s>`` to start a sentence);
            only the last ``order - 1`` count.

        Returns
        -------
        float
            The log10 probability.
        """
        if word not in self.words:
            word = UNK
        context = tuple(w if w in self.words else UNK for w in context)
        context = (
            context[len(context) - self.order + 1 :] if self.order > 1 else ()
        )
        backoff = 0.0
        while (*context, word) not in self.log10_probs:
            backoff += self.log10_backoffs.get(context, 0.0)
            context = context[1:]
        return backoff + self.log10_probs[(*context, word)]

    def sentence_log10_prob(self, sentence):
        """log10 probability of a whole sentence, ``</s>`` included.

        Arguments
        ---------
        sentence : str
            Words separated by white space.

        Returns
        -------
        float
            Sum of the words' and the end marker's log10 probabilities.
        """
        history = [BOS]
        total = 0.0
        for word in sentence.split() + [EOS]:
            total += self.log10_prob(word, history)
            history.append(word)
        return total

    def perplexity(self, sentences):
        """Perplexity per token over sentences, ``</s>`` counted as a token.

        Arguments
        ---------
        sentences : iterable of str
            Test transcripts.

        Returns
        -------
        float
            ``10 ** (-sum log10 P / tokens)``.
        """
        total, tokens = 0.0, 0
        for sentence in sentences:
            total += self.sentence_log10_prob(sentence)
            tokens += len(sentence.split()) + 1
        if tokens == 0:
            raise ValueError("perplexity of no sentence")
        return 10.0 ** (-total / tokens)

    def write_arpa(self, path):
        """Writes the model as an ARPA file (KenLM, SRILM and flashlight
        read it).

        Arguments
        ---------
        path : str
            Output file.
        """
        by_order = defaultdict(list)
        for ngram in self.log10_probs:
            by_order[len(ngram)].append(ngram)
        lines = ["", "\\data\\"]
        for n in range(1, self.order + 1):
            lines.append(f"ngram {n}={len(by_order[n])}")
        for n in range(1, self.order + 1):
            lines += ["", f"\\{n}-grams:"]
            for ngram in sorted(by_order[n]):
                line = f"{self.log10_probs[ngram]:.7f}\t{' '.join(ngram)}"
                if n < self.order and ngram in self.log10_backoffs:
                    line += f"\t{self.log10_backoffs[ngram]:.7f}"
                lines.append(line)
        lines += ["", "\\end\\", ""]
        with open(path, "w", encoding="utf-8") as arpa_file:
            arpa_file.write("\n".join(lines))

    @classmethod
    def read_arpa(cls, path):
        """Reads an ARPA file.

        Arguments
        ---------
        path : str
            An ARPA n-gram file.

        Returns
        -------
        BackoffNgramLM
            The model.

        Raises
        ------
        ValueError
            Naming the file and line on a malformed entry.
        """
        log10_probs, log10_backoffs = {}, {}
        order = 0
        with open(path, encoding="utf-8") as arpa_file:
            for number, line in enumerate(arpa_file, 1):
                line = line.strip()
                if (
                    not line
                    or line.startswith("ngram ")
                    or line
                    in (
                        "\\data\\",
                        "\\end\\",
                    )
                ):
                    continue
                if line.startswith("\\") and line.endswith("-grams:"):
                    order = int(line[1 : line.index("-")])
                    continue
                fields = line.split()
                if order == 0 or len(fields) not in (order + 1, order + 2):
                    raise ValueError(
                        f"{path}:{number}: not an ARPA n-gram line: {line!r}"
                    )
                ngram = tuple(fields[1 : order + 1])
                log10_probs[ngram] = float(fields[0])
                if len(fields) == order + 2:
                    log10_backoffs[ngram] = float(fields[-1])
        if not log10_probs:
            raise ValueError(f"{path}: no n-gram in the file")
        return cls(log10_probs, log10_backoffs)
