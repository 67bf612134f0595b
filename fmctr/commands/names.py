"""Names for hashed indices, rebuilt from data.

Hashing forgets tokens. Reading data through the same path that training and scoring
take (fmctr.datasets.inputs.open_input, with the model's schema, hashing and
--min-count map) gives every position of every row its index as the model sees it;
the same read passes through the text each position was hashed from, so each
position gets its field and token too. Counting (field, token, index) over the data
names every index the data reaches, and shows collisions as what they are: several
tokens on one index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from fmctr.datasets.inputs import Log, open_input, silent, token_columns
from fmctr.hashing.rare import RARE_TOKEN
from fmctr.hashing.tokens import Rows
from fmctr.models.modelfile import Model
from fmctr.reading.read import LINE_COLUMN
from fmctr.reading.schema import SPARSE_FORMATS, Schema



@dataclass
class Tagged:
    """A part of the data as the model scores it, each position with its field (an
    index into schema.fields) and the token it was hashed from."""

    rows: Rows
    field: np.ndarray  # int32 per position
    token: pl.Series  # str per position; the rare token where --min-count mapped it
    kept: pl.DataFrame | None  # the --keep columns asked for


def position_order(schema: Schema) -> list[int]:
    """Which schema field each of a row's segments is (Schema.segments)."""
    return [j for j, _ in schema.segments()]


def _tokens(frame: pl.DataFrame, schema: Schema) -> tuple[pl.Series, np.ndarray]:
    """Each position's token, and each row's segment lengths (rows, segments)."""
    if schema.format in SPARSE_FORMATS:  # as fmctr.hashing.tokens._hash_sparse_lines splits them
        feats = frame.get_column(LINE_COLUMN).str.strip_chars().str.split(" ").list.eval(
            pl.element().filter(pl.element() != "")).list.slice(1)
        lengths = feats.list.len().to_numpy().astype(np.int64)[:, None]
        flat = feats.explode().drop_nulls()
        token = flat.str.extract(r"^(.*):([^:]*)$", 1).fill_null(flat)
        return token, lengths
    order = [schema.fields[j] for j in position_order(schema)]
    if all(f.kind != "multi" for f in order) and order:  # one token per field: gather, column-major to row-major
        columns = [frame.get_column(f.name).str.strip_chars() if f.kind == "numeric" else frame.get_column(f.name)
                   for f in order]
        n, width = frame.height, len(order)
        by_row = (np.arange(n)[:, None] + np.arange(width)[None, :] * n).ravel()
        return pl.concat(columns).gather(by_row), np.ones((n, width), np.int64)
    parts = [pl.col(f.name).str.split(f.sep) if f.kind == "multi" else
             pl.col(f.name).str.strip_chars() if f.kind == "numeric" else pl.col(f.name) for f in order]
    lists = frame.select(pl.concat_list(parts).alias("t")).to_series()
    bags = [frame.get_column(f.name).str.split(f.sep).list.len().to_numpy() for f in order if f.kind == "multi"]
    singles = sum(f.kind != "multi" for f in order)
    lengths = np.column_stack([np.ones((frame.height, singles), np.int64), *bags]) if bags or singles \
        else np.zeros((frame.height, 0), np.int64)
    return lists.explode(), lengths.astype(np.int64)


def _tag(rows: Rows, frame: pl.DataFrame, schema: Schema, model: Model) -> tuple[Rows, np.ndarray, pl.Series]:
    token, lengths = _tokens(frame, schema)
    segments = np.array(position_order(schema) if schema.format not in SPARSE_FORMATS else [0], np.int32)
    field = np.repeat(np.tile(segments, len(lengths)), lengths.ravel())
    if len(field) != len(rows.indices) or len(token) != len(rows.indices):
        raise AssertionError(f"{len(rows.indices)} hashed positions but {len(token)} tokens")
    if model.rare is not None:
        mapped = model.rare.apply(rows)
        token = pl.Series("t", np.where(mapped.indices != rows.indices, RARE_TOKEN, token.to_numpy()))
        rows = mapped
    return rows, field, token.alias("token")


def tagged_parts(path: str, model: Model, *, keep: Sequence[str] = (), log: Log = silent,
                 allow_missing: bool = False, format: str | None = None,
                 limit: int | None = None) -> tuple[str, Iterator[Tagged]]:
    """The data's name and its parts, tagged, up to `limit` rows."""
    data = open_input(path, schema=model.schema, hashing=model.hashing, require_label=False, keep=keep, log=log,
                      allow_missing=allow_missing, format=format, tokens=True)
    text_columns = token_columns(model.schema)

    def parts() -> Iterator[Tagged]:
        seen = 0
        for rows, kept in data.parts:
            if limit is not None and seen + len(rows) > limit:
                rows, kept = rows.slice(0, limit - seen), kept.head(limit - seen)
            tagged_rows, field, token = _tag(rows, kept.select(text_columns), model.schema, model)
            yield Tagged(tagged_rows, field, token, kept.select(keep) if keep else None)
            seen += len(rows)
            if limit is not None and seen >= limit:
                return

    return data.name, parts()


class NameBook:
    """Counts of (field, token, index) over tagged data. A numeric field's many values
    on one bucket index are one name, the range of values seen there ("3..4"); a
    log1p/raw field's values are one name on its one index."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.numeric = np.array([f.kind == "numeric" for f in schema.fields] or [False])
        self._tokens: list[pl.DataFrame] = []
        self._numbers: list[pl.DataFrame] = []
        self.rows = 0

    def add(self, part: Tagged) -> None:
        self.rows += len(part.rows)
        frame = pl.DataFrame({"field": part.field, "index": part.rows.indices, "token": part.token})
        numeric = self.numeric[part.field] if len(self.schema.fields) else np.zeros(len(part.field), bool)
        words = frame.filter(pl.Series(~numeric))
        self._tokens.append(words.group_by("field", "index", "token").agg(pl.len().alias("count")))
        numbers = frame.filter(pl.Series(numeric)).with_columns(pl.col("token").cast(pl.Float64, strict=False).alias("x"))
        self._numbers.append(numbers.group_by("field", "index", pl.col("x").is_null().alias("missing")).agg(
            pl.len().alias("count"), pl.col("x").min().alias("lo"), pl.col("x").max().alias("hi")))
        if len(self._tokens) >= 16:
            self._tokens, self._numbers = [self._merged_tokens()], [self._merged_numbers()]

    def _merged_tokens(self) -> pl.DataFrame:
        return pl.concat(self._tokens).group_by("field", "index", "token").agg(pl.col("count").sum())

    def _merged_numbers(self) -> pl.DataFrame:
        return pl.concat(self._numbers).group_by("field", "index", "missing").agg(
            pl.col("count").sum(), pl.col("lo").min(), pl.col("hi").max())

    def table(self) -> pl.DataFrame:
        """field (index into schema.fields), index, token, count; most frequent first."""
        numbers = self._merged_numbers() if self._numbers else None
        parts = [self._merged_tokens()] if self._tokens else []
        if numbers is not None and numbers.height:
            name = pl.when(pl.col("missing")).then(pl.lit("")).when(pl.col("lo") == pl.col("hi")).then(
                pl.col("lo").cast(pl.String)).otherwise(pl.format("{}..{}", pl.col("lo"), pl.col("hi")))
            parts.append(numbers.select("field", "index", name.alias("token"), "count"))
        if not parts:
            return pl.DataFrame(schema={"field": pl.Int32, "index": pl.Int32, "token": pl.String, "count": pl.UInt32})
        table = pl.concat([p.cast({"count": pl.Int64}) for p in parts])
        return table.sort(["count", "field", "token"], descending=[True, False, False])


def names_by_index(table: pl.DataFrame, schema: Schema, indices: np.ndarray, most: int = 3) -> dict[int, dict]:
    """For each of `indices` the data reaches: its names (field=token, count), most
    frequent first, at most `most` of them, and how many tokens share it."""
    wanted = table.join(pl.DataFrame({"index": np.asarray(indices, np.int64)}).cast(pl.Int32), on="index", how="semi")
    grouped = wanted.group_by("index").agg(pl.col("field"), pl.col("token"), pl.col("count"))
    out = {}
    for index, fields, tokens, counts in grouped.iter_rows():
        names = [{"field": field_name(schema, f), "token": t, "count": c} for f, t, c in zip(fields, tokens, counts)]
        names.sort(key=lambda n: -n["count"])
        out[index] = {"names": names[:most], "tokens": len(names), "count": sum(counts)}
    return out


def field_name(schema: Schema, j: int) -> str:
    return schema.fields[j].name if schema.fields else "features"


def health(table: pl.DataFrame, schema: Schema, bits: int) -> dict:
    """Hash-space health: distinct tokens per field, how many share an index with
    another token, and whether --bits should grow (or could shrink)."""
    shared = table.group_by("index").agg(pl.len().alias("tokens")).filter(pl.col("tokens") > 1)
    marked = table.join(shared.select("index", pl.lit(True).alias("shared")), on="index", how="left") \
        .with_columns(pl.col("shared").fill_null(False))
    per_field = marked.group_by("field").agg(
        pl.len().alias("tokens"), pl.col("index").n_unique().alias("indices"),
        pl.col("shared").sum().alias("tokens_sharing"),
        (pl.col("count") * pl.col("shared")).sum().alias("occurrences_shared"), pl.col("count").sum().alias("occurrences"),
    ).sort("field")
    tokens, used = table.height, table.get_column("index").n_unique()
    occurrences = int(table.get_column("count").sum() or 0)
    on_shared = int(marked.filter(pl.col("shared")).get_column("count").sum() or 0)
    size = 1 << bits
    grow = int(np.ceil(np.log2(100 * tokens))) if tokens else bits  # expected share of tokens sharing <= ~1%
    return {
        "bits": bits, "indices": size, "tokens": tokens, "indices_used": used,
        "load": tokens / size,
        "indices_shared": shared.height, "share_of_used_indices_shared": shared.height / used if used else 0.0,
        "share_of_tokens_sharing": int(marked.get_column("shared").sum()) / tokens if tokens else 0.0,
        "share_of_occurrences_shared": on_shared / occurrences if occurrences else 0.0,
        "suggested_bits": min(max(grow, 10), 31),
        "advice": _advice(bits, min(max(grow, 10), 31), on_shared / occurrences if occurrences else 0.0),
        "fields": [{"field": field_name(schema, f), "tokens": t, "indices": i, "tokens_sharing": s,
                    "share_of_occurrences_shared": o / n if n else 0.0}
                   for f, t, i, s, o, n in per_field.iter_rows()],
    }


def _advice(bits: int, suggested: int, shared: float) -> str:
    if shared > 0.01 and suggested > bits:
        return (f"grow: {shared:.1%} of the occurrences fall on an index shared by several tokens; "
                f"--bits {suggested} would keep that near 1%")
    if suggested < bits - 2:
        return f"could shrink: --bits {suggested} would hold these tokens with few collisions (a smaller, faster model)"
    return "fine"
