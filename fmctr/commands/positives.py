"""`fmctr train POSITIVES --items CATALOGUE --negatives N`: a recall model from a log
of positives (what users watched or bought) and the item catalogue, as a plain function.

The schema is the ordinary one over the positives' columns and the catalogue's item
columns (--item; by default every column of the catalogue, the first the item id).
Each positive's item features come from the catalogue row its id names, so a positive
and a sampled negative are hashed alike; the item columns the positives file may also
carry are not read. The model file is an ordinary FM with towers: `fmctr recall`,
`eval --ranking` and `predict` read it as they read any other.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import numpy as np
import polars as pl

from fmctr import __version__
from fmctr.commands.recall import check_item_ids, open_side
from fmctr.datasets.inputs import DEFAULT_BITS, Log, silent
from fmctr.datasets.negatives import Positives
from fmctr.errors import BadInput, BadOptions
from fmctr.hashing.tokens import HashSpec, Rows
from fmctr.models.modelfile import Model
from fmctr.models.weights import FMWeights
from fmctr.reading.read import display_name, open_source
from fmctr.reading.schema import Schema, SchemaSpec
from fmctr.training.config import TrainConfig
from fmctr.training.loop import TrainResult
from fmctr.training.positives import UNOBSERVED, train_positives


def positives_schema(path: str, items: str, spec: SchemaSpec) -> Schema:
    """The schema over the positives' columns and the catalogue's item columns."""
    for given, what in ((path, "POSITIVES"), (items, "--items")):
        if given == "-":
            raise BadOptions(f"training from positives reads {what} twice: give a file, not stdin")
    own, catalogue = open_source(path).columns, open_source(items).columns
    if not spec.item:
        spec = replace(spec, item=tuple(c for c in catalogue if c != spec.label and c not in spec.ignore))
    absent = [c for c in spec.item if c not in catalogue]
    if absent:
        raise BadInput(f"{display_name(items)}: item column(s) {', '.join(absent)} not in the catalogue")
    if spec.item[0] not in own:
        raise BadInput(f"{display_name(path)}: no item id column {spec.item[0]!r} (the first --item column)")
    columns = [c for c in own if c not in spec.item or c == spec.item[0]]
    return spec.check().resolve(columns + [c for c in spec.item if c not in columns])


def _side(path: str, schema_only: Model, *, item: bool, item_id: str) -> tuple[Rows, pl.Series]:
    parts = list(open_side(path, schema_only, item=item, keep=[item_id]))
    rows = Rows.concat([r for r, _ in parts])
    return rows, pl.concat([f.get_column(item_id) for _, f in parts]).cast(pl.String)


def read_positives(path: str, items: str, schema: Schema, hashing: HashSpec) -> Positives:
    """The positives' user rows, the catalogue's item rows, and each positive's item."""
    schema_only = Model(FMWeights.zeros(1, 0), schema, hashing, {})
    item_id = schema.item[0]
    catalogue, ids = _side(items, schema_only, item=True, item_id=item_id)
    check_item_ids(ids, display_name(items), item_id)
    context, chosen = _side(path, schema_only, item=False, item_id=item_id)
    lookup = pl.DataFrame({"id": ids, "at": np.arange(len(ids), dtype=np.int64)})
    at = pl.DataFrame({"id": chosen}).join(lookup, on="id", how="left", maintain_order="left").get_column("at")
    if at.is_null().any():
        row = int(at.is_null().arg_max())
        raise BadInput(f"{display_name(path)}: row {row + 1}: item {chosen[row]!r} is not in the catalogue "
                       f"{display_name(items)}")
    return Positives(context, at.to_numpy(), catalogue)


def train_from_positives(path: str, items: str, *, spec: SchemaSpec, hashing: HashSpec | None, cfg: TrainConfig,
                         negatives: int, sampling: str, loss: str, pool: int = 1, unobserved: float | None = None,
                         progress=None,
                         log: Log = silent, given: frozenset[str] | None = None) -> tuple[Model, TrainResult]:
    """Read the positives and the catalogue, train (fmctr.training.positives) and
    return the model with its run. `given`: the training options the user set (the
    others start from this mode's defaults)."""
    started = time.time()
    hashing = hashing or HashSpec(bits=DEFAULT_BITS)
    schema = positives_schema(path, items, spec)
    positives = read_positives(path, items, schema, hashing)
    result, chose = train_positives(positives, cfg, bits=hashing.bits, negatives=negatives, sampling=sampling,
                                    loss=loss, pool=pool, unobserved=unobserved, progress=progress, given=given)
    training = {
        "input": display_name(path), "items": display_name(items), "rows": len(positives.items),
        "catalogue_items": len(positives.catalogue), "loss": loss,
        **({"unobserved": UNOBSERVED if unobserved is None else unobserved} if loss in ("als", "blend") else {}),
        **({} if loss == "als" else {"negatives": negatives, "sampling": sampling, "pool": pool}),
        "epochs_run": len(result.history), "best_epoch": result.best_epoch,
        "history": [asdict(e) for e in result.history], "config": asdict(result.config), "engine": result.engine,
        "device": result.device, "seconds": round(time.time() - started, 3), "fmctr_version": __version__,
    }
    if result.notes:
        training.update(result.notes)
    if chose is not None and chose is not result:
        best = chose.history[chose.best_epoch - 1]
        training["selection"] = {"best_epoch": chose.best_epoch, "valid_metrics": best.valid,
                                 "history": [asdict(e) for e in chose.history]}
    return Model(result.weights, schema, hashing, training, result.optimizer, kind="fm"), result
