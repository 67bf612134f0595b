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

from fmctr.atomic import Kind, Target, writing
from fmctr.errors import BadInput, BadModel, BadOptions
from fmctr.hashing.rare import RareMap
from fmctr.hashing.stream import Hasher
from fmctr.hashing.tokens import Rows
from fmctr.models.modelfile import Model
from fmctr.models.retrieval import Exclusions, top_k
from fmctr.models.towers import UserSide, item_vectors, user_side
from fmctr.ranking import auc_from_counts, mean_ranking_metrics
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


def open_side(path: str, model: Model, *, item: bool, keep: Sequence[str] = (),
              optional: Sequence[str] = ()) -> Iterator[tuple[Rows, pl.DataFrame]]:
    """Hashed rows of one side (users or items) with their `keep` columns (and those
    of `optional` that the data has), chunk by chunk; every feature column of the
    side must be there."""
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
    keep = [*keep, *(c for c in optional if c in source.columns)]
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
    check_item_ids(ids, name, item_id)
    return Catalogue(name, ids, np.concatenate(vectors), columns)


def check_item_ids(ids: pl.Series, name: str, item_id: str) -> None:
    """A catalogue's ids: every item has one, and no two items share one."""
    empty = ids.is_null() | (ids.str.strip_chars() == "")
    if empty.any():
        raise BadInput(f"{name}: item {int(empty.arg_max()) + 1} has no id (column {item_id!r})")
    duplicated = ids.is_duplicated()
    if duplicated.any():
        raise BadInput(f"{name}: item id {ids[int(duplicated.arg_max())]!r} appears more than once; ids must be unique")


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
    clash = [c for c in plan.keep if c in (item_id, RANK, SCORE, *catalogue.columns.columns)]
    if clash:
        raise BadOptions(f"--keep {clash[0]}: the output has a column of that name already (the item's columns, "
                         f"{RANK}, {SCORE})")
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
        if user_cols:
            parts.append(kept.select(user_cols)[user_row])
    taken = set(parts[0].columns) if parts else set()
    item_cols = [c for c in catalogue.columns.columns if c not in taken]
    parts.append(catalogue.columns.select(item_cols)[item_at])
    parts.append(pl.DataFrame({RANK: np.tile(np.arange(1, k + 1), n)[found.ravel()], SCORE: score}))
    return pl.concat(parts, how="horizontal")


def recall(users_path: str, catalogue: Catalogue, model: Model, output: Target, plan: RecallPlan, *,
           item_id: str | None = None) -> int:
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


def _looks_like_vectors(path) -> bool:
    try:
        columns = pl.read_parquet_schema(path).keys() if str(path).endswith(".parquet") else \
            pl.read_csv(path, n_rows=0).columns
    except Exception:  # (not a table: not ours to replace)
        return False
    return "v0" in columns or "item_term" in columns or "one" in columns


VECTORS = Kind("a vectors table (Parquet or CSV with columns v0, v1, ...)", _looks_like_vectors)


def write_table(frame: pl.DataFrame, output: Target) -> None:
    """Parquet when the name ends in .parquet, else CSV; atomically."""
    import io

    from fmctr.atomic import write_bytes

    name = str(output.name if hasattr(output, "name") else output)
    buffer = io.BytesIO()
    if name.endswith(".parquet"):
        frame.write_parquet(buffer)
    else:
        frame.write_csv(buffer)
    write_bytes(output, buffer.getvalue())


def user_vectors_frame(users_path: str, model: Model, *, id_columns: Sequence[str]) -> pl.DataFrame:
    """Every user's id columns, vector and constant."""
    towers_of(model)
    frames = []
    for rows, kept in open_side(users_path, model, item=False, keep=id_columns):
        side = user_side(model.weights, rows)
        frames.append(vectors_frame(kept, side.vectors, side.constants))
    return pl.concat(frames)


def item_vectors_frame(catalogue: Catalogue, item_id: str) -> pl.DataFrame:
    return vectors_frame(catalogue.columns.select(item_id), catalogue.vectors)


# --- ranking evaluation over the full catalogue ---------------------------------------

EVAL_USER_BLOCK = 64


@dataclass
class HeldOut:
    """The test users (one row each, in order of first appearance) and, per user, the
    catalogue positions of their held-out items."""

    ids: pl.Series
    rows: Rows
    relevant: list[np.ndarray]


def held_out(test_path: str, model: Model, catalogue: Catalogue, *, user_id: str, item_id: str) -> HeldOut:
    """Read interactions (user columns and the item id; a label column, where there is
    one, keeps only the rows labelled 1): each user's features (from their first row)
    and held-out items. An item missing from the catalogue is an error."""
    label = model.schema.label
    rows, frames = [], []
    for part, kept in open_side(test_path, model, item=False, keep=[user_id, item_id], optional=[label] if label else []):
        rows.append(part)
        frames.append(kept)
    frame = pl.concat(frames).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
    at = catalogue.positions(frame.get_column(item_id))
    if (at < 0).any():
        first = int(np.argmax(at < 0))
        raise BadInput(f"{display_name(test_path)}: item id {frame.get_column(item_id)[first]!r} (row {first + 1}) is "
                       f"not in the catalogue {catalogue.name}")
    frame = frame.with_columns(pl.Series("_at", at), pl.col(user_id).cast(pl.String).alias("_user"))
    users = frame.group_by("_user", maintain_order=True).agg(pl.col("_row").first())
    positive = frame
    if label in frame.columns:
        positive = frame.filter(pl.col(label).str.strip_chars().is_in(["1", "+1", "1.0"]))
    lists = users.select("_user").join(positive.group_by("_user").agg(pl.col("_at").unique().sort()), on="_user",
                                       how="left", maintain_order="left").get_column("_at").to_list()
    relevant = [np.asarray(x or [], np.int64) for x in lists]
    return HeldOut(users.get_column("_user"), Rows.concat(rows).take(users.get_column("_row").to_numpy()), relevant)


EVAL_ITEM_BLOCK = 2048  # each (user, held-out item) pair compares its score with a block of this many


def _rank_counts(vectors: np.ndarray, items: np.ndarray, relevant: list[np.ndarray], exclude: Exclusions,
                 item_block: int = EVAL_ITEM_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every (user, relevant item) pair of these users: its score, and how many
    candidates (items not excluded) score above it and level with it (itself
    included), over every item block. Levels are within a relative 1e-5 (BLAS and
    the pair's own product round differently)."""
    pair_user = np.repeat(np.arange(len(relevant)), [len(r) for r in relevant])
    pair_item = np.concatenate(relevant) if relevant else np.zeros(0, np.int64)
    score = np.einsum("pd,pd->p", vectors[pair_user].astype(np.float64), items[pair_item].astype(np.float64))
    tol = 1e-5 * (1.0 + np.abs(score))
    above = np.zeros(len(score), np.int64)
    level = np.zeros(len(score), np.int64)
    rows, excluded = exclude.block(0, len(relevant))
    for start in range(0, len(items), item_block):
        stop = min(start + item_block, len(items))
        block = vectors @ items[start:stop].T
        inside = (excluded >= start) & (excluded < stop)
        block[rows[inside], excluded[inside] - start] = -np.inf
        diff = block[pair_user] - score[:, None]
        above += (diff > tol[:, None]).sum(axis=1)
        level += (np.abs(diff) <= tol[:, None]).sum(axis=1)
    return score, above, level


def _full_ranking(relevants: list[np.ndarray], score, above, level, candidates: np.ndarray) -> tuple[list, list]:
    """Per user: the rank of the best-ranked held-out item among the candidates, and
    the AUC (relevant items are not counted as negatives)."""
    first_ranks, aucs, at = [], [], 0
    for u, relevant in enumerate(relevants):
        p = len(relevant)
        if p == 0:
            first_ranks.append(0)
            aucs.append(float("nan"))
            continue
        s, tol = score[at : at + p], 1e-5 * (1.0 + np.abs(score[at : at + p]))
        diff = s[None, :] - s[:, None]  # [j, q]: q's score minus j's
        rel_above = (diff > tol[:, None]).sum(axis=1)
        rel_level = (np.abs(diff) <= tol[:, None]).sum(axis=1)  # (j itself included)
        neg_above, neg_level = above[at : at + p] - rel_above, level[at : at + p] - rel_level
        first_ranks.append(int(1 + above[at : at + p].min()))
        aucs.append(auc_from_counts(neg_above, neg_level, int(candidates[u]) - p))
        at += p
    return first_ranks, aucs


def vector_ranking_metrics(users: np.ndarray, items: np.ndarray, relevant: list[np.ndarray], k: int,
                           exclude: Exclusions | None = None) -> dict:
    """fmctr.ranking's metrics when user u's score of item i is <users[u], items[i]>
    (a per-user constant changes no ranking): each user's top K and whole ranking over
    the items not excluded, against `relevant` (item positions per user; excluded
    ones are dropped). Any model with user and item vectors can be measured by this
    same code: fmctr's towers, or a peer's (LightFM's representations, implicit's
    factors)."""
    if k < 1:
        raise BadOptions(f"-k must be at least 1, got {k}")
    exclude = exclude or Exclusions.none(len(users))
    relevant = [np.setdiff1d(r, exclude.items[exclude.offsets[u] : exclude.offsets[u + 1]])
                for u, r in enumerate(relevant)]
    users, items = np.ascontiguousarray(users, np.float32), np.ascontiguousarray(items, np.float32)
    positions, _ = top_k(users, items, k, exclude=exclude)
    candidates = len(items) - np.diff(exclude.offsets)
    first_ranks, aucs = [], []
    for lo in range(0, len(relevant), EVAL_USER_BLOCK):
        hi = min(lo + EVAL_USER_BLOCK, len(relevant))
        part = Exclusions(exclude.offsets[lo : hi + 1] - exclude.offsets[lo],
                          exclude.items[exclude.offsets[lo] : exclude.offsets[hi]])
        counts = _rank_counts(users[lo:hi], items, relevant[lo:hi], part)
        ranks, user_aucs = _full_ranking(relevant[lo:hi], *counts, candidates[lo:hi])
        first_ranks += ranks
        aucs += user_aucs
    tops = [row[row >= 0].tolist() for row in positions]
    metrics = mean_ranking_metrics(tops, [set(r.tolist()) for r in relevant], k, first_ranks, aucs)
    return {**metrics, "catalogue": len(items), "test_users": len(relevant), "excluded": int(exclude.offsets[-1])}


def evaluate_ranking(test_path: str, catalogue: Catalogue, model: Model, *, k: int, user_id: str, item_id: str,
                     seen: pl.DataFrame | None = None) -> dict:
    """fmctr.ranking's metrics of the model's top K over the whole catalogue, for the
    users of `test_path` and their held-out items; `seen` (seen_positions: e.g. the
    training interactions) leaves items out of the ranking, and out of the held-out
    items where both hold them."""
    if k < 1:
        raise BadOptions(f"-k must be at least 1, got {k}")
    held = held_out(test_path, model, catalogue, user_id=user_id, item_id=item_id)
    side = user_side(model.weights, held.rows)
    return vector_ranking_metrics(side.vectors, catalogue.vectors, held.relevant, k, exclusions_for(held.ids, seen))
