"""Recall as plain functions: a catalogue of items and a stream of users in, each
user's top-K items out (CSV), with the model's towers (fmctr.models.towers) and the
blocked exact search (fmctr.models.retrieval). Also the tower vectors as a table, and
ranking evaluation over the full catalogue (fmctr.ranking).

The score written is the FM's logit of the user's row joined with the item's row:
sigmoid(score) is what `fmctr predict` gives that joined row with the same model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from fmctr.atomic import Kind, Target, check_output, writing
from fmctr.datasets.inputs import Log, silent
from fmctr.errors import BadInput, BadModel, BadOptions
from fmctr.hashing.rare import RareMap
from fmctr.hashing.stream import Hasher
from fmctr.hashing.tokens import Rows
from fmctr.models.modelfile import Model
from fmctr.models.retrieval import Exclusions, top_k
from fmctr.models.towers import UserSide, item_vectors, user_side
from fmctr.reading.read import display_name, open_source, prefetch

RANK, SCORE = "rank", "score"


def towers_of(model: Model) -> None:
    """Refuse a model that cannot be split (no item side, or not an FM)."""
    if model.kind != "fm":
        raise BadModel(f"recall needs an FM; this model is of kind {model.kind!r}")
    if not model.schema.has_towers:
        raise BadModel("the model does not say which columns describe the item: train it with --item COLS "
                       "(and --user COLS)")


def _side_rare(model: Model, item: bool) -> RareMap | None:
    """The model's --min-count map, for the fields of one side only (its positions)."""
    rare = model.rare
    if rare is None:
        return None
    chosen = set(model.schema.item)
    at = [n for n, f in enumerate(model.schema.fields) if (f.name in chosen) == item]
    return RareMap(rare.min_count, rare.frequent, rare.rare_index[at], rare.positional)


def _short(names: Sequence[str], most: int = 10) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def open_side(path: str, model: Model, *, item: bool, keep: Sequence[str] = ()) -> Iterator[tuple[Rows, pl.DataFrame]]:
    """Hashed rows of one side (users or items) with their `keep` columns, chunk by
    chunk; every feature column of the side must be there."""
    schema = model.schema.side(item)
    name = display_name(path)
    source = open_source(path)
    what = "item" if item else "user"
    absent = [f for f in schema.feature_names if f not in source.columns]
    if absent:
        raise BadInput(f"{name}: {what} column(s) {', '.join(absent)} not found (columns: {_short(source.columns)})")
    absent = [k for k in keep if k not in source.columns]
    if absent:
        raise BadInput(f"{name}: column(s) {', '.join(absent)} not found (columns: {_short(source.columns)})")
    hasher = Hasher(source, schema, model.hashing, name=name, require_label=False, keep=list(dict.fromkeys(keep)),
                    rare=_side_rare(model, item))
    return prefetch(hasher.parts())


@dataclass
class Catalogue:
    """The items: ids (strings), vectors (m, dim+1) float32, and the raw columns
    kept for --with-features."""

    name: str
    ids: pl.Series
    vectors: np.ndarray
    columns: pl.DataFrame

    def positions(self, ids: pl.Series) -> np.ndarray:
        """Each id's position in the catalogue; -1 where it is not there."""
        lookup = pl.DataFrame({"id": self.ids, "at": np.arange(len(self.ids), dtype=np.int64)})
        found = pl.DataFrame({"id": ids.cast(pl.String)}).join(lookup, on="id", how="left", maintain_order="left")
        return found.get_column("at").fill_null(-1).to_numpy()


def load_catalogue(path: str, model: Model, *, item_id: str | None = None, features: bool = False) -> Catalogue:
    """Read and vectorise the catalogue. `item_id`: the id column (default: the
    model's first item column). Refuses an empty catalogue, missing or duplicate ids."""
    towers_of(model)
    item_id = item_id or model.schema.item[0]
    keep = [item_id, *(model.schema.side(item=True).feature_names if features else [])]
    name = display_name(path)
    vectors, kept = [], []
    try:
        for rows, frame in open_side(path, model, item=True, keep=keep):
            vectors.append(item_vectors(model.weights, rows))
            kept.append(frame)
    except BadInput as e:
        if "no data rows" in str(e):
            raise BadInput(f"{name}: the catalogue has no items") from None
        raise
    columns = pl.concat(kept).select(list(dict.fromkeys(keep)))
    ids = columns.get_column(item_id)
    empty = ids.is_null() | (ids.str.strip_chars() == "")
    if empty.any():
        raise BadInput(f"{name}: item {int(empty.arg_max()) + 1} has no id (column {item_id!r})")
    duplicated = ids.is_duplicated()
    if duplicated.any():
        raise BadInput(f"{name}: item id {ids[int(duplicated.arg_max())]!r} appears more than once; ids must be unique")
    return Catalogue(name, ids, np.concatenate(vectors), columns)


def read_seen(path: str, user_id: str, item_id: str) -> pl.DataFrame:
    """The (user id, item id) pairs of a file of interactions, as strings."""
    name = display_name(path)
    source = open_source(path)
    absent = [c for c in (user_id, item_id) if c not in source.columns]
    if absent:
        raise BadInput(f"{name}: column(s) {', '.join(absent)} not found (it needs the user id and the item id; "
                       f"columns: {_short(source.columns)})")
    frames = []
    for chunk in prefetch(source.chunks):
        pieces = chunk.parse(name, source.columns, source.separator, source.quoted) if hasattr(chunk, "parse") \
            else [chunk]
        frames += [c.frame.select(pl.col(user_id).cast(pl.String).alias("user"),
                                  pl.col(item_id).cast(pl.String).alias("item")) for c in pieces]
    return pl.concat(frames) if frames else pl.DataFrame({"user": [], "item": []}, schema={"user": pl.String,
                                                                                             "item": pl.String})


def seen_positions(seen: pl.DataFrame, catalogue: Catalogue) -> pl.DataFrame:
    """The pairs as (user id, catalogue position); items not in the catalogue dropped
    (they cannot be recalled anyway)."""
    at = catalogue.positions(seen.get_column("item"))
    return seen.select("user").with_columns(pl.Series("at", at)).filter(pl.col("at") >= 0).unique()


def exclusions_for(users: pl.Series, seen: pl.DataFrame | None) -> Exclusions:
    """The positions to leave out for each of these users (in their order)."""
    if seen is None:
        return Exclusions.none(len(users))
    order = pl.DataFrame({"user": users.cast(pl.String), "row": np.arange(len(users), dtype=np.int64)})
    pairs = order.join(seen, on="user", how="inner").sort("row", "at")
    counts = np.bincount(pairs.get_column("row").to_numpy(), minlength=len(users))
    offsets = np.zeros(len(users) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Exclusions(offsets, pairs.get_column("at").to_numpy().astype(np.int64))


def _header_ends(path, last: bytes) -> bool:
    with open(path, "rb") as f:
        header = f.readline(1 << 16)
    return header.rstrip(b"\r\n").split(b",")[-1] == last


CANDIDATES = Kind("a candidates CSV (its header ends in 'score')", lambda p: _header_ends(p, SCORE.encode()))


@dataclass
class RecallPlan:
    """What `fmctr recall` writes per user: the K best items not seen, with which columns."""

    k: int
    keep: tuple[str, ...] = ()
    user_id: str | None = None  # the users' column that --exclude's pairs name
    seen: pl.DataFrame | None = None  # (user id, catalogue position), from seen_positions
    with_features: bool = False
    precision: int | None = None


def _user_columns(model: Model, plan: RecallPlan) -> list[str]:
    """The users' columns a chunk carries through: --keep, the id, and with
    --with-features every user-side feature."""
    wanted = [*plan.keep, *([plan.user_id] if plan.seen is not None else [])]
    if plan.with_features:
        wanted += model.schema.side(item=False).feature_names
    return list(dict.fromkeys(wanted))


def _check_plan(plan: RecallPlan, catalogue: Catalogue, item_id: str) -> None:
    if plan.k < 1:
        raise BadOptions(f"-k must be at least 1, got {plan.k}")
    if plan.precision is not None and not 1 <= plan.precision <= 17:
        raise BadOptions(f"--precision must be from 1 to 17 decimal places, got {plan.precision}")
    clash = [c for c in plan.keep if c in (item_id, RANK, SCORE)]
    if clash:
        raise BadOptions(f"--keep {clash[0]}: that name is an output column (the item id, rank or score)")
    if plan.seen is not None and plan.user_id is None:
        raise BadOptions("--exclude needs the users' id column: give --user-id (the model names no --user column)")


def candidates_frame(users: UserSide, kept: pl.DataFrame | None, catalogue: Catalogue, positions: np.ndarray,
                     scores: np.ndarray, plan: RecallPlan, model: Model) -> pl.DataFrame:
    """One line per (user, found item): the user's columns, the item's, rank, score."""
    n, k = positions.shape
    found = positions >= 0
    user_row = np.repeat(np.arange(n), k)[found.ravel()]
    item_at = positions[found]
    score = (users.constants[:, None] + scores.astype(np.float64))[found]
    parts = []
    if kept is not None:
        user_cols = list(plan.keep)
        if plan.with_features:
            user_cols += [c for c in model.schema.side(item=False).feature_names if c not in user_cols]
        parts.append(kept.select(user_cols)[user_row])
    taken = set(parts[0].columns) if parts else set()
    item_cols = [c for c in catalogue.columns.columns if c not in taken]
    parts.append(catalogue.columns.select(item_cols)[item_at])
    parts.append(pl.DataFrame({RANK: np.tile(np.arange(1, k + 1), n)[found.ravel()], SCORE: score}))
    return pl.concat(parts, how="horizontal")


def recall(users_path: str, catalogue: Catalogue, model: Model, output: Target, plan: RecallPlan, *,
           item_id: str | None = None, log: Log = silent) -> int:
    """Write each user's top-K candidates as CSV (users streamed chunk by chunk, in
    input order); returns the number of users."""
    item_id = item_id or model.schema.item[0]
    _check_plan(plan, catalogue, item_id)
    written = users = 0
    with writing(output) as out:
        for rows, kept in open_side(users_path, model, item=False, keep=_user_columns(model, plan)):
            side = user_side(model.weights, rows)
            ids = kept.get_column(plan.user_id) if plan.seen is not None else None
            exclude = exclusions_for(ids, plan.seen) if ids is not None else None
            positions, scores = top_k(side.vectors, catalogue.vectors, plan.k, exclude=exclude)
            frame = candidates_frame(side, kept, catalogue, positions, scores, plan, model)
            out.write(frame.write_csv(include_header=written == 0, float_precision=plan.precision).encode())
            written += 1
            users += len(rows)
        out.flush()
    return users


def vectors_frame(ids: pl.DataFrame, vectors: np.ndarray, constants: np.ndarray | None = None) -> pl.DataFrame:
    """Ids, then v0..v{d-1} (the factor sums) and the last component: `item_term` for
    items (their own terms: linear and pairs within the item), `one` for users, who
    also get `constant` (c_u). score(u, i) = constant_u + <user row, item row>."""
    dim = vectors.shape[1] - 1
    columns = {f"v{f}": vectors[:, f] for f in range(dim)}
    last = "one" if constants is not None else "item_term"
    columns[last] = vectors[:, dim]
    frame = pl.concat([ids, pl.DataFrame(columns)], how="horizontal")
    return frame.with_columns(pl.Series("constant", constants)) if constants is not None else frame
