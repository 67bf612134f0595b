"""What `fmctr tune` tries next, given the trials so far: the search plan, without
data or training, so that it can be tested with a synthetic objective.

A trial's settings are the moves away from the defaults, by name (`lr_x`: the
learning rate as a multiple of the optimizer's default; `touch_l2_x`: the touch L2
as a multiple of its default; `batch_x`: the batch size as a multiple of the
engine's default; the others are option values). The plan:

0. close to `fmctr train`'s rival regularisation (fmctr.training.selection.RIVAL_L2:
   no touch L2 on the factors, a stronger --l2-all-factors; here the touch L2 of the
   linear weights goes too, as `touch_l2_x` scales both), two moves at once, which
   the coordinate-wise round does not make (train's other rivals, 3x the rate and no
   factors, are single moves of round 1), so that tune also starts where train's
   choice may lead;
1. coordinate-wise from the defaults: each setting moved alone to each of its values
   (every setting's likeliest value first, then every setting's next, ...);
2. combine what helped: the moves that beat the defaults, best first, each added to
   the best so far and kept only if the result is better still;
3. coordinate rounds around the best (each setting to each of its values, and one
   step further along its ladder - e.g. a rate x30 once x10 is best), taking every
   improvement at once, until a round finds nothing new;
4. random perturbations of the best (two settings at a time), from a seeded
   generator, so that a search is repeatable.

The caller runs each candidate and records it; it stops asking when its budget is
spent (fmctr.commands.tune).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from fmctr.training.selection import RIVAL_L2


@dataclass(frozen=True)
class Setting:
    default: object
    first: tuple  # the values of the first, coordinate-wise round (besides the default)
    ladder: tuple = ()  # ordered values that later rounds step along (one step from the best's value)

    def around(self, value) -> list:
        """The values to try from `value` in a later round: the first round's, the
        default, and the ladder's neighbours of `value`."""
        values = [self.default, *self.first]
        if value in self.ladder:
            i = self.ladder.index(value)
            values += [self.ladder[j] for j in (i - 1, i + 1) if 0 <= j < len(self.ladder)]
        return list(dict.fromkeys(v for v in values if v != value))


def space(*, optimizer: str, init_std: float, dim: int, l2_all_factors: float, l2_all: float) -> dict[str, Setting]:
    """The settings `fmctr tune` searches (the ones that matter most first)."""
    others = tuple(o for o in ("ftrl", "adam", "adagrad") if o != optimizer)
    # Each setting's first values in the order most likely to help (larger rates, less
    # L2 and a larger initial scale helped on adult; fmctr.commands.tune's budget may
    # allow only a few trials): the first round takes each setting's first value, then
    # each one's second, and so on.
    return {
        "lr_x": Setting(1.0, (3.0, 10.0, 0.3, 0.1), (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)),
        "touch_l2_x": Setting(1.0, (0.1, 0.0, 10.0), (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)),
        "l2_all_factors": Setting(l2_all_factors, tuple(v for v in (1e-4, 0.0, 1e-3) if v != l2_all_factors),
                                  (0.0, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
        "init_std": Setting(init_std, tuple(v for v in (0.03, 0.1, 0.001) if v != init_std),
                            (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)),
        "dim": Setting(dim, tuple(v for v in (16, 4, 32, 0) if v != dim)),
        "batch_x": Setting(1.0, (4.0, 16.0, 0.25)),
        "optimizer": Setting(optimizer, others),
        "l2_all": Setting(l2_all, tuple(v for v in (1e-4,) if v != l2_all), (0.0, 1e-5, 1e-4, 1e-3)),
    }


# fmctr.training.selection.RIVAL_L2 in the plan's terms
TRAIN_RIVAL_L2 = {"touch_l2_x": 0.0, "l2_all_factors": RIVAL_L2["l2_all_factors"]}


def normal(settings: dict, sp: dict[str, Setting]) -> dict:
    """The settings without those at their default, in the space's order."""
    return {k: settings[k] for k in sp if k in settings and settings[k] != sp[k].default}


def key(settings: dict) -> tuple:
    return tuple(sorted(settings.items(), key=lambda kv: kv[0]))


@dataclass
class Book:
    """The trials so far, as the plan sees them: settings and scores (lower is better)."""

    space: dict[str, Setting]
    scores: dict[tuple, float] = field(default_factory=dict)
    order: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)

    def tried(self, settings: dict) -> bool:
        return key(normal(settings, self.space)) in self.scores

    def record(self, settings: dict, score: float) -> None:
        settings = normal(settings, self.space)
        self.scores[key(settings)] = score
        self.order.append(settings)
        if score < self.scores.get(key(self.best), float("inf")) or not self.order[:-1]:
            self.best = settings

    def score(self, settings: dict) -> float:
        return self.scores.get(key(normal(settings, self.space)), float("inf"))


def plan(book: Book, seed: int = 0) -> Iterator[dict]:
    """Candidates, each untried when yielded (normalised); reads `book` as it grows."""
    sp = book.space
    if not book.tried({}):
        yield {}
    if "touch_l2_x" in sp and "l2_all_factors" in sp:
        yield from _fresh(book, TRAIN_RIVAL_L2)
    for rank in range(max(len(s.first) for s in sp.values())):
        for name, setting in sp.items():
            if rank < len(setting.first):
                yield from _fresh(book, {name: setting.first[rank]})
    yield from _combine(book)
    while True:
        fresh = False
        for name, setting in sp.items():
            for value in setting.around(book.best.get(name, setting.default)):
                for candidate in _fresh(book, {**book.best, name: value}):
                    fresh = True
                    yield candidate
        if not fresh:
            break
    yield from _perturb(book, random.Random(seed))


def _fresh(book: Book, settings: dict) -> Iterator[dict]:
    settings = normal(settings, book.space)
    if not book.tried(settings):
        yield settings


def _combine(book: Book) -> Iterator[dict]:
    """The single moves that beat the defaults, best first, each added to the best."""
    base = book.score({})
    moves = [s for s in book.order if len(s) == 1 and book.score(s) < base]
    moves.sort(key=book.score)
    for move in moves[1:]:
        (name, value), = move.items()
        if name not in book.best:
            yield from _fresh(book, {**book.best, name: value})


def _perturb(book: Book, rng: random.Random, attempts: int = 2000) -> Iterator[dict]:
    names = list(book.space)
    for _ in range(attempts):
        settings = dict(book.best)
        for name in rng.sample(names, 2):
            s = book.space[name]
            settings[name] = rng.choice(s.around(settings.get(name, s.default)))
        yield from _fresh(book, settings)
