"""`fmctr inspect`: which features and interactions a model leans on, by name.

Plain functions that return JSON-able values. With data (read through
fmctr.commands.names, so that tokens map to the indices the model uses) every
index gets its names, counts and mean contribution to the logit; pairs of features
are ranked by their mean |pair term| over the data, |<v_i, v_j>| times how often
(and with which values) they occur together; fields are compared by the mean |pair
terms| between them; and the hash space is checked for collisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from fmctr.atomic import Kind
from fmctr.commands.names import NameBook, field_name, health, names_by_index, tagged_parts
from fmctr.datasets.inputs import Log, silent
from fmctr.errors import BadOptions
from fmctr.hashing.tokens import Rows
from fmctr.models import terms
from fmctr.models.modelfile import Model

CANDIDATES = 1000  # features whose pairs are counted (the most promising: see _pairs)
DEFAULT_ROWS = 1_000_000


@dataclass
class Seen:
    """Data as inspect uses it: the rows in memory, each position's field, the names."""

    name: str
    rows: Rows
    field: np.ndarray
    book: NameBook


def read_data(path: str, model: Model, *, limit: int | None = DEFAULT_ROWS, log: Log = silent,
              allow_missing: bool = False, format: str | None = None) -> Seen:
    """Up to `limit` rows of raw data, hashed as the model hashes them, with names."""
    if model.kind != "fm":
        raise BadOptions(f"inspect knows the FM's terms; this model is a {model.kind!r}")
    if limit is not None and limit < 1:
        raise BadOptions(f"--rows must be at least 1, got {limit}")
    name, parts = tagged_parts(path, model, log=log, allow_missing=allow_missing, format=format, limit=limit)
    book, rows, fields = NameBook(model.schema), [], []
    for part in parts:
        book.add(part)
        rows.append(Rows(part.rows.indices, part.rows.values, part.rows.offsets, None))
        fields.append(part.field)
    return Seen(name, Rows.concat(rows), np.concatenate(fields).astype(np.int32), book)


def _stored(model: Model) -> np.ndarray:
    w = model.weights
    return np.flatnonzero((w.linear != 0) | np.any(w.factors != 0, axis=1))


def _feature(index: int, model: Model, names: dict, stats: dict | None) -> dict:
    w = model.weights
    known = names.get(index, {"names": [], "tokens": 0, "count": 0})
    first = known["names"][0] if known["names"] else {"field": None, "token": None}
    out = {"index": int(index), "field": first["field"], "token": first["token"], "tokens": known["tokens"],
           "names": known["names"], "count": known["count"], "weight": float(w.linear[index]),
           "factor_norm": float(np.linalg.norm(w.factors[index]))}
    if stats is not None:
        out["mean_abs_contribution"] = float(stats["abs_total"].get(index, 0.0))
        out["mean_contribution"] = float(stats["total"].get(index, 0.0))
    return out


def _feature_stats(seen: Seen, model: Model) -> tuple[np.ndarray, dict]:
    """Per index the data reaches (ascending): the sum of x^2 over its occurrences, and
    its mean |contribution| and mean contribution (its linear term plus half its pair
    terms) over the rows."""
    r, w = seen.rows, model.weights
    if w.num_features <= 1 << 24:  # sums over the whole hash space: no sort, no per-position arrays
        slots, size = r.indices, w.num_features
    else:
        reached, slots = np.unique(r.indices, return_inverse=True)
        size = len(reached)
    sums = {name: np.zeros(size) for name in ("abs_total", "total", "x2")}
    terms.contributions(r.indices, r.values, r.offsets, w.linear, w.factors, slots, sums["abs_total"], sums["total"],
                        sums["x2"])
    if size == w.num_features:
        reached = np.flatnonzero(np.bincount(r.indices, minlength=size))
        sums = {k: v[reached] for k, v in sums.items()}
    n = max(len(r), 1)
    return reached, {"x2": sums["x2"], "abs_total": sums["abs_total"] / n, "total": sums["total"] / n}


def _pairs(seen: Seen, model: Model, reached: np.ndarray, x2: np.ndarray, top: int, candidates: int) -> dict:
    """The `top` pairs of indices by mean |pair term| over the rows. Only pairs of
    candidates are counted: the indices with the largest |v_i| sqrt(sum x_i^2), which
    bounds (Cauchy-Schwarz) the pair score of i with any j by that of i times that of
    j over the rows. `exact` says whether that bound proves no pair left out could
    enter the top."""
    factors, n = model.weights.factors, max(len(seen.rows), 1)
    reach = np.linalg.norm(factors[reached].astype(np.float64), axis=1) * np.sqrt(x2)
    order = np.argsort(-reach, kind="stable")
    chosen = np.sort(reached[order[:candidates]])
    slot = np.searchsorted(chosen, seen.rows.indices)
    slot = np.where((slot < len(chosen)) & (chosen[np.minimum(slot, len(chosen) - 1)] == seen.rows.indices), slot, -1)
    sums, counts = terms.pair_sums(slot.astype(np.int32), seen.rows.values, seen.rows.offsets, len(chosen))
    v = factors[chosen].astype(np.float64)
    dots = v @ v.T
    score = np.abs(dots) * sums / n
    flat = np.argsort(-score, axis=None, kind="stable")[:top]
    found = [(a, b) for a, b in zip(*np.unravel_index(flat, score.shape)) if counts[a, b] > 0]
    bound = reach[order[0]] * reach[order[candidates]] / n if len(order) > candidates else 0.0
    kth = score[found[-1]] if len(found) == top else 0.0
    pairs = [{"index_a": int(chosen[a]), "index_b": int(chosen[b]), "count": int(counts[a, b]),
              "effect": float(dots[a, b]), "mean_abs": float(score[a, b])} for a, b in found]
    return {"pairs": pairs, "candidates": len(chosen), "bound_outside": float(bound), "exact": bool(bound <= kth)}


def _field_matrix(seen: Seen, model: Model) -> dict:
    schema = model.schema
    n_fields = max(len(schema.fields), 1)
    sums = terms.field_pairs(seen.rows.indices, seen.rows.values, seen.rows.offsets, seen.field, n_fields,
                             model.weights.factors) / max(len(seen.rows), 1)
    matrix = np.triu(sums) + np.triu(sums, 1).T
    names = [field_name(schema, j) for j in range(n_fields)]
    ranked = sorted(((float(sums[a, b]), a, b) for a in range(n_fields) for b in range(a, n_fields)), reverse=True)
    return {"fields": names, "matrix": matrix.round(6).tolist(),
            "top": [{"a": names[a], "b": names[b], "mean_abs": s} for s, a, b in ranked[:20] if s > 0]}


def _top(keys: np.ndarray, values: np.ndarray, top: int) -> np.ndarray:
    return keys[np.argsort(-values, kind="stable")[:top]]


def inspect_model(model: Model, seen: Seen | None = None, *, top: int = 20, candidates: int = CANDIDATES) -> dict:
    """What the model leans on: top features by |weight|, and with data by mean
    |contribution|; top pairs by name; the field x field interaction strengths; the
    hash space's health."""
    if top < 1:
        raise BadOptions(f"--top must be at least 1, got {top}")
    stored, w = _stored(model), model.weights
    by_weight = _top(stored, np.abs(w.linear[stored]), top)
    out = {"bias": float(w.bias[0]), "dim": w.dim, "indices_stored": int(len(stored))}
    if seen is None:
        out["features_by_weight"] = [_feature(i, model, {}, None) for i in by_weight]
        return out
    reached, stats = _feature_stats(seen, model)
    by_contribution = _top(reached, stats["abs_total"], top)
    pairs = _pairs(seen, model, reached, stats["x2"], top, candidates) if w.dim > 0 else \
        {"pairs": [], "candidates": 0, "bound_outside": 0.0, "exact": True}
    wanted = np.unique(np.concatenate([by_weight, by_contribution, [p["index_a"] for p in pairs["pairs"]],
                                       [p["index_b"] for p in pairs["pairs"]]]).astype(np.int64))
    table = seen.book.table()
    names = names_by_index(table, model.schema, wanted)
    order = {f.name: j for j, f in enumerate(model.schema.fields)}
    per_index = {k: dict(zip(reached.tolist(), stats[k].tolist())) for k in ("abs_total", "total")}
    out.update({
        "data": seen.name, "rows": len(seen.rows), "indices_reached": int(len(reached)),
        "features_by_weight": [_feature(i, model, names, per_index) for i in by_weight],
        "features_by_contribution": [_feature(i, model, names, per_index) for i in by_contribution],
        "pairs": {**pairs, "pairs": [_named_pair(p, names, order) for p in pairs["pairs"]]},
        "fields": _field_matrix(seen, model) if w.dim > 0 else None,
        "health": health(table, model.schema, model.hashing.bits),
    })
    return out


def _named_pair(pair: dict, names: dict, order: dict) -> dict:
    def name(index: int) -> dict:
        known = names.get(index, {"names": [], "tokens": 0})
        first = known["names"][0] if known["names"] else {"field": None, "token": None}
        return {"field": first["field"], "token": first["token"], "tokens": known["tokens"]}

    a, b = name(pair["index_a"]), name(pair["index_b"])
    if order.get(a["field"], -1) > order.get(b["field"], -1):  # the schema's order of fields, for reading
        a, b = b, a
        pair = {**pair, "index_a": pair["index_b"], "index_b": pair["index_a"]}
    return {"a": a, "b": b, **pair}


EXPORT_BLOCK = 1 << 16


def _joined_names(table: pl.DataFrame, model: Model) -> pl.DataFrame:
    """index -> 'field=token | field=token' (most frequent first) and the occurrences."""
    fields = pl.Series([field_name(model.schema, j) for j in range(max(len(model.schema.fields), 1))])
    named = table.with_columns(pl.format("{}={}", pl.col("field").map_batches(
        lambda f: fields.gather(f), return_dtype=pl.String), pl.col("token")).alias("name"))
    return named.sort("count", descending=True).group_by("index").agg(
        pl.col("name").str.join(" | ").alias("names"), pl.col("count").sum()).cast({"index": pl.Int64})


def export_text(model: Model, out, seen: Seen | None = None) -> int:
    """The weights as tab-separated text, one line per stored index (the bias first):
    index, names (with --data: every field=token on it, most frequent first; several
    mean a collision), count, linear weight, factors v1..vk. Written block by block to
    the binary stream `out`; returns the lines written."""
    w, stored = model.weights, _stored(model)
    joined = _joined_names(seen.book.table(), model) if seen is not None else None
    header = ["index", "names", "count", "linear", *[f"v{f + 1}" for f in range(w.dim)]]
    out.write(("\t".join(header) + "\n").encode())
    out.write(("\t".join(["", "(bias)", "", np.format_float_positional(w.bias[0]), *[""] * w.dim]) + "\n").encode())
    for start in range(0, len(stored), EXPORT_BLOCK):
        index = stored[start : start + EXPORT_BLOCK].astype(np.int64)
        block = pl.DataFrame({"index": index})
        block = block.join(joined, on="index", how="left") if joined is not None else \
            block.with_columns(pl.lit(None, pl.String).alias("names"), pl.lit(None, pl.Int64).alias("count"))
        block = block.with_columns(pl.Series("linear", w.linear[index]),
                                   *[pl.Series(f"v{f + 1}", w.factors[index, f]) for f in range(w.dim)])
        out.write(block.sort("index").select(header).write_csv(separator="\t", include_header=False).encode())
    out.flush()
    return len(stored) + 1


def _is_export(path) -> bool:
    with open(path, "rb") as f:
        return f.readline(64).startswith(b"index\tnames\t")


EXPORT = Kind("a weights text file written by fmctr inspect --export-text", _is_export)
