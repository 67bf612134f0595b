"""Training rows from positives only: each positive (a user's context features and
the catalogue row of the item it names) meets N catalogue items drawn as negatives,
drawn again every epoch, each with its own item features.

The rows an epoch trains on are the ordinary hashed rows - the user's features, then
an item's - so the CPU engine trains them at its usual speed:

- logistic: the positive with label 1 and its N negatives with label 0, shuffled;
- pairwise (BPR): N pairs per positive, each the positive row followed by one negative
  row; `order` then indexes pairs, and the engine trains on score(pos) - score(neg).

Negatives are drawn from the whole catalogue, uniformly or by popularity smoothed as
count^0.75 (word2vec's exponent). A draw may be an item the user also has as a
positive; it is not rejected: with a catalogue much larger than a user's history
this is rare (on MovieLens-100k, 6% of draws for the average user), it costs no
lookup, and LightFM's BPR and implicit's BPR sample the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from fmctr.datasets.batches import BLOCK_ROWS, RowSource
from fmctr.datasets.pattern import Problem
from fmctr.errors import BadOptions
from fmctr.hashing.tokens import Rows, is_ones, ones

SAMPLINGS = ("uniform", "popularity")
POPULARITY_POWER = 0.75


@dataclass
class Positives:
    """What positives-only training knows: each positive's context (user) features,
    the catalogue row of its item, and the catalogue's item features. `users` names
    each positive's user where one user's rows differ between positives (a history of
    the user's other items, leaving out the positive's own); None: equal rows are one
    user (fmctr.training.positives.user_keys)."""

    context: Rows
    items: np.ndarray  # int64, a catalogue row per positive
    catalogue: Rows
    users: np.ndarray | None = None  # int64, a key per positive

    def __post_init__(self) -> None:
        if len(self.context) != len(self.items):
            raise BadOptions("one catalogue item per positive")
        if self.users is not None and len(self.users) != len(self.items):
            raise BadOptions("one user key per positive")
        if len(self.catalogue) == 0:
            raise BadOptions("the item catalogue is empty")

    def take(self, rows: np.ndarray) -> Positives:
        return Positives(self.context.take(rows), self.items[rows], self.catalogue,
                         None if self.users is None else self.users[rows])


def item_weights(positives: Positives, sampling: str) -> np.ndarray | None:
    """The probability of drawing each catalogue item (None: uniform)."""
    if sampling not in SAMPLINGS:
        raise BadOptions(f"unknown sampling {sampling!r} (choose from {', '.join(SAMPLINGS)})")
    if sampling == "uniform":
        return None
    counts = np.bincount(positives.items, minlength=len(positives.catalogue)).astype(np.float64)
    # +1: an item nobody chose yet can still be drawn
    weights = (counts + 1.0) ** POPULARITY_POWER
    return weights / weights.sum()


def draw(rng: np.random.Generator, rows: int, negatives: int, size: int, weights: np.ndarray | None) -> np.ndarray:
    """(rows, negatives) catalogue rows drawn with replacement."""
    if weights is None:
        return rng.integers(0, size, (rows, negatives), dtype=np.int64)
    return np.searchsorted(np.cumsum(weights), rng.random((rows, negatives)), side="right").clip(0, size - 1)


@numba.njit(cache=True, nogil=True)
def _join(c_idx, c_val, c_off, i_idx, i_val, i_off, context, items, out_idx, out_val, out_off, copy_values):
    """Row j = context row context[j] followed by catalogue row items[j]."""
    out_off[0] = 0
    for j in range(len(context)):
        r, c = context[j], items[j]
        p = out_off[j]
        for q in range(c_off[r], c_off[r + 1]):
            out_idx[p] = c_idx[q]
            if copy_values:
                out_val[p] = c_val[q]
            p += 1
        for q in range(i_off[c], i_off[c + 1]):
            out_idx[p] = i_idx[q]
            if copy_values:
                out_val[p] = i_val[q]
            p += 1
        out_off[j + 1] = p


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True,
           fastmath={"nnan", "nsz", "reassoc", "contract", "arcp"})  # (reassociated sums vectorise; -inf kept)
def best_of_pool(users, items, drawn, codes, own, out) -> None:
    """out[r, n] = the candidate of drawn[r, n, :] whose <users[r], items[c]> is
    highest, leaving out a user's own positives (codes[r] + c in the sorted `own`;
    the first candidate where every one is). Ties to the first drawn. Scored one
    candidate at a time: gathering every candidate's vector first (numpy's einsum over
    items[drawn]) moved a row of 8,192 x 32 x 4 vectors per chunk through memory. Each
    candidate is looked for among its user's own keys alone, not all of `own` (a chunk
    of 8,192 MovieLens-100k positives at dim 64: 31 -> 24 ms)."""
    count, n, pool = drawn.shape
    dim, size = users.shape[1], items.shape[0]
    for r in numba.prange(count):
        # (the user's own keys, codes[r] + 0..size-1, are a run of `own`)
        mine = own[np.searchsorted(own, codes[r]) : np.searchsorted(own, codes[r] + size)]
        for a in range(n):
            best, pick = -np.inf, drawn[r, a, 0]
            for q in range(pool):
                c = drawn[r, a, q]
                key = codes[r] + c
                at = np.searchsorted(mine, key)
                if at < len(mine) and mine[at] == key:
                    continue
                score = np.float32(0.0)
                for f in range(dim):
                    score += users[r, f] * items[c, f]
                if score > best:
                    best, pick = score, c
            out[r, a] = pick


def join(positives: Positives, context: np.ndarray, items: np.ndarray, labels: np.ndarray) -> Rows:
    """The rows (context row, catalogue item) for each pair of `context` and `items`."""
    ctx, cat = positives.context, positives.catalogue
    lengths = np.diff(ctx.offsets)[context] + np.diff(cat.offsets)[items]
    nnz = int(lengths.sum())
    one_hot = is_ones(ctx.values) and is_ones(cat.values)
    indices = np.empty(nnz, np.int32)
    values = ones(nnz) if one_hot else np.empty(nnz, np.float32)
    offsets = np.empty(len(context) + 1, np.int64)
    _join(ctx.indices, ctx.values, ctx.offsets, cat.indices, cat.values, cat.offsets, context, items,
          indices, values, offsets, not one_hot)
    return Rows(indices, values, offsets, labels.astype(np.float32))


class FromPositives(RowSource):
    """Rows made from the positives' user rows and the catalogue's: the features they
    can hold are those two sets', whatever is drawn. Where they are few, the engine
    lays its tables out for them (RowSource.few_features; not counted: a count comes
    from a pass over drawn rows, feature_counts) - at the default 2^22 features a
    table of every feature cost a small catalogue's run seconds and gigabytes in
    copies of the weights (a blend of three models on the sample world: 17 s and 10
    GB peak, against 3 s and 0.34 GB with this and FMWeights.met in the model file)."""

    positives: Positives

    def few_features(self, size: int) -> tuple[np.ndarray, None] | None:
        if getattr(self, "_known", None) is None:
            p = self.positives
            self._known = np.union1d(p.context.indices, p.catalogue.indices).astype(np.int64)
        return (self._known, None) if len(self._known) < size // 8 else None


class SampledRows(FromPositives):
    """A row source over positives whose negatives are drawn again on each pass.
    `pairs` says whether the rows come as (positive, negative) pairs for BPR (trained by
    the engine's `method`); `rows` counts what one epoch trains on: rows, or pairs."""

    def __init__(self, positives: Positives, negatives: int, *, sampling: str = "uniform", pairs: bool = False,
                 seed: int = 0):
        if negatives < 1:
            raise BadOptions(f"--negatives must be at least 1, got {negatives}")
        self.positives, self.negatives, self.pairs = positives, negatives, pairs
        self.method = "train_pairs" if pairs else "train"
        self.weights = item_weights(positives, sampling)
        self.rows = len(positives.items) * (negatives if pairs else negatives + 1)
        self.seed = seed  # blocks() gives the same draw each time

    def epoch(self, rng: np.random.Generator) -> Rows:
        """This pass's rows: positives and fresh negatives (labels 1 and 0)."""
        p, n = self.positives, self.negatives
        count = len(p.items)
        drawn = self.draw(rng)
        if self.pairs:  # pos, neg, pos, neg, ...
            context = np.repeat(np.arange(count), 2 * n)
            items = np.stack([np.repeat(p.items, n), drawn.ravel()], axis=1).ravel()
            labels = np.tile(np.array([1.0, 0.0]), count * n)
        else:
            context = np.repeat(np.arange(count), n + 1)
            items = np.concatenate([p.items[:, None], drawn], axis=1).ravel()
            labels = np.tile(np.r_[1.0, np.zeros(n)], count)
        return join(p, context, items, labels)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """This pass's negatives: (positives, negatives) catalogue rows."""
        return draw(rng, len(self.positives.items), self.negatives, len(self.positives.catalogue), self.weights)

    def shuffled(self, rng: np.random.Generator):
        rows = self.epoch(rng)
        order = rng.permutation(self.rows).astype(np.int64)
        for lo in range(0, self.rows, BLOCK_ROWS):
            yield rows, order[lo : lo + BLOCK_ROWS]

    def blocks(self):
        rows = self.epoch(np.random.default_rng(self.seed))
        for lo in range(0, len(rows), BLOCK_ROWS):
            yield rows.slice(lo, min(lo + BLOCK_ROWS, len(rows)))


class CatalogueRows(FromPositives):
    """A source of positives for the full-catalogue softmax (fmctr.models.softmax): no
    negatives are drawn, each positive is scored against every catalogue item. A piece
    is (the positives, an order over them); `method` names the engine's method that
    trains on it. `rows` counts positives."""

    method = "train_softmax"

    def __init__(self, positives: Positives, *, max_items: int):
        if len(positives.catalogue) > max_items:
            raise BadOptions(f"--loss softmax scores the whole catalogue for every batch: {len(positives.catalogue):,} "
                             f"items is over {max_items:,}; use --loss logistic (sampled negatives)")
        self.positives, self.rows = positives, len(positives.items)

    def shuffled(self, rng: np.random.Generator):
        order = rng.permutation(self.rows).astype(np.int64)
        for lo in range(0, self.rows, BLOCK_ROWS):
            yield self.positives, order[lo : lo + BLOCK_ROWS]

    def blocks(self):
        """The positives' rows (user then item features), labelled 1."""
        p = self.positives
        for lo in range(0, self.rows, BLOCK_ROWS):
            at = np.arange(lo, min(lo + BLOCK_ROWS, self.rows))
            yield join(p, at, p.items[at], np.ones(len(at)))


class PatternRows(CatalogueRows):
    """A source for implicit ALS (fmctr.models.ials, `--loss als`): every catalogue
    item not among a user's positives is an implicit 0, so nothing is drawn; an epoch
    is one sweep over the whole users x items pattern, a single piece. `keys` names
    each positive's user (fmctr.training.positives.keys_of)."""

    method = "train_als"

    def __init__(self, positives: Positives, keys: np.ndarray, *, unobserved: float):
        self.positives, self.rows = positives, len(positives.items)
        self.problem = Problem.of(positives.context, keys, positives.items, positives.catalogue, unobserved=unobserved)

    def shuffled(self, rng: np.random.Generator):
        yield self.problem, np.arange(self.rows, dtype=np.int64)
