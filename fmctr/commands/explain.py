"""`fmctr predict --explain N`: why each row scored what it did.

A row's logit is the sum of its terms: the bias, one linear term w_i x_i per feature
and one pair term <v_i, v_j> x_i x_j per pair of features (fmctr.models.terms). For
each row this writes the logit, its N largest terms by |value| with their names
(from the row's own tokens, so there is no doubt about collisions), and `rest`, the
sum of every other term: value_1 + ... + value_N + rest = logit.

Columns, after the --keep ones: logit, term_1, value_1, ..., term_N, value_N, rest,
probability. A term is named `bias`, `field=token` (a linear term; `field=` is a
missing value, `field=__rare__` a value --min-count mapped to its field's rare
token, `field=token (value)` a numeric field's standardised value) or
`field=token*field=token` (a pair term). A row with fewer than N terms
leaves the last term columns empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from fmctr.commands.names import Tagged, field_name, tagged_parts
from fmctr.datasets.inputs import Log, silent
from fmctr.errors import BadOptions
from fmctr.models import scores, terms
from fmctr.models.modelfile import Model

PROBABILITY = "probability"


def columns(n: int) -> list[str]:
    return ["logit", *[c for j in range(1, n + 1) for c in (f"term_{j}", f"value_{j}")], "rest", PROBABILITY]


def explained(part: Tagged, model: Model, n: int) -> pl.DataFrame:
    """One part's rows: logit, the n largest terms (names and values), rest, probability."""
    rows, w = part.rows, model.weights
    count = len(rows)
    kinds = np.full((count, n), -1, np.int8)
    first, second = np.zeros((count, n), np.int32), np.zeros((count, n), np.int32)
    value, rest = np.zeros((count, n), np.float64), np.zeros(count, np.float64)
    terms.top_terms(rows.indices, rows.values, rows.offsets, w.bias, w.linear, w.factors, n, kinds, first, second,
                    value, rest)
    logit = scores.logits(w.bias, w.linear, w.factors, rows.indices, rows.values, rows.offsets)  # as predict's
    fields = pl.Series([field_name(model.schema, j) for j in range(max(len(model.schema.fields), 1))])
    names = pl.DataFrame({"f": fields.gather(part.field), "t": part.token, "v": _tags(rows, model)}).select(
        pl.format("{}={}", "f", "t") + pl.when(pl.col("v") != "").then(pl.format(" ({})", "v")).otherwise(pl.lit(""))
    ).to_series()
    start, last = rows.offsets[:-1], max(len(names) - 1, 0)
    out = {"logit": logit}
    for j in range(n):
        kind = pl.Series(kinds[:, j])
        a = names.gather(np.minimum(start + first[:, j], last)) if len(names) else pl.repeat("", count, eager=True)
        b = names.gather(np.minimum(start + second[:, j], last)) if len(names) else a
        out[f"term_{j + 1}"] = pl.select(pl.when(kind == terms.BIAS).then(pl.lit("bias"))
                                         .when(kind == terms.LINEAR).then(a)
                                         .when(kind == terms.PAIR).then(a + "*" + b)).to_series()
        out[f"value_{j + 1}"] = pl.Series(np.where(kinds[:, j] >= 0, value[:, j], np.nan)).fill_nan(None)
    out["rest"] = rest
    with np.errstate(over="ignore"):
        out[PROBABILITY] = 1.0 / (1.0 + np.exp(-logit))
    return pl.DataFrame(out).select(columns(n))


def _tags(rows, model: Model) -> np.ndarray:
    """Each position's tag (Schema.segments: "value" for a standardised value, "exact"
    for an `exact` field's value token, else ""; those come before the bags, so a row's
    first positions are its first segments)."""
    tags = [t for _, t in model.schema.segments()]
    at = np.arange(len(rows.indices)) - np.repeat(rows.offsets[:-1], np.diff(rows.offsets))
    return np.array(tags + [""], object)[np.minimum(at, len(tags))]


def write_explained(path: str, model: Model, out, *, n: int, keep: Sequence[str] = (), log: Log = silent,
                    allow_missing: bool = False, precision: int | None = None, format: str | None = None) -> int:
    """predict's CSV with the explanation columns; returns the rows written."""
    if n < 1:
        raise BadOptions(f"--explain must be at least 1, got {n}")
    if model.kind != "fm":
        raise BadOptions(f"--explain knows the FM's terms; this model is a {model.kind!r}")
    clash = [k for k in keep if k in columns(n)]
    if clash:
        raise BadOptions(f"--keep {clash[0]}: with --explain that name is an output column")
    _, parts = tagged_parts(path, model, keep=keep, log=log, allow_missing=allow_missing, format=format)
    written = 0
    for part in parts:
        frame = explained(part, model, n)
        if part.kept is not None:
            frame = pl.concat([part.kept, frame], how="horizontal")
        out.write(frame.write_csv(include_header=written == 0, float_precision=precision).encode())
        written += len(part.rows)
    out.flush()
    return written
