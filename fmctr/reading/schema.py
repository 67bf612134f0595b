"""Which column is the label, and what kind of feature every other column is.

A `SchemaSpec` is what the user asked for (flags, a schema file or a preset); it may
leave columns out ("every other column is categorical"). `SchemaSpec.resolve` meets it
with the columns the data really has and returns a `Schema`: every feature named, in a
fixed order. The resolved `Schema` is what the model file stores.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fmctr.errors import BadSchema

KINDS = ("categorical", "numeric", "multi")
NUMERIC_MODES = ("auto", "fine", "bucket", "log1p", "raw", "standard", "exact")
BUCKETED = ("auto", "fine", "bucket", "exact")  # the modes that hash a numeric value's bucket token (fmctr.hashing.bucket_values)
FINE = ("auto", "fine", "exact")  # the modes whose fractional values get buckets of their own scale
FORMATS = ("csv", "tsv", "criteo", "parquet", "libsvm", "libffm")
SPARSE_FORMATS = ("libsvm", "libffm")

# libsvm/libffm rows have no named columns: their features form one bag under this name.
SPARSE_FIELD = "features"


@dataclass(frozen=True)
class Field:
    """One feature column. `numeric` says how a numeric column becomes features:
    `bucket` hashes the token floor(ln(x)^2) for x > 2, and one of its own for
    each floor(x) up to 2 (fmctr.hashing.bucket_values); `fine` does the same for
    whole numbers and gives a fractional value a bucket of its own scale (a quarter
    octave of |x|, with its sign), where `bucket` puts every value in [0, 1) on one
    token; `log1p` and
    `raw` put the value sign(x)*ln(1+|x|) or x on the field's one index. `auto`
    is `fine`, and a column whose training values are fractional also gets its
    value standardised, (sign(x)*ln(1+|x|) - center) / scale clipped to +-5, as a
    second feature: `standard` holds (center, scale), fitted on the training rows
    (fmctr.hashing.standard). The mode `standard` puts that standardised value alone
    on the field's one index (no bucket). `exact` is `fine` with two more features:
    the standardised value (fitted on whole numbers too) and the value's own token
    ("=7688": for a whole number, the value itself, where its bucket may hold many
    values; fmctr.hashing.tokens.exact_tokens). `sep` splits a multi-valued column
    into a bag of tokens."""

    name: str
    kind: str = "categorical"
    numeric: str = "bucket"
    sep: str = "|"
    standard: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.standard is None:
            del d["standard"]  # (files without it read as before)
        else:
            d["standard"] = list(self.standard)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Field:
        if not isinstance(d, dict):
            raise TypeError(f"a field must be a mapping, not {type(d).__name__}")
        standard = d.get("standard")
        if standard is not None:
            if not isinstance(standard, list) or len(standard) != 2 or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) for v in standard) or not standard[1] > 0:
                raise BadSchema(f"malformed schema: field {d.get('name')!r}: standard must be [center, scale > 0]")
            d = {**d, "standard": (float(standard[0]), float(standard[1]))}
        return cls(**d)


# Format version 1 of model files and hashed datasets gave a numeric field's values
# x <= 2 the same tokens as its log^2 buckets (1 and 3 shared one); version 2 keeps
# them apart. A version-1 file is still read when no field of it is bucketed.
BUCKETS_CHANGED_AFTER = 1


def old_buckets(version, schema: dict) -> bool:
    """Whether a file of this format version and schema (as stored) has numeric
    fields hashed by the version-1 bucket rule."""
    fields = schema.get("fields", []) if isinstance(schema, dict) else []
    return version == BUCKETS_CHANGED_AFTER and any(
        isinstance(f, dict) and f.get("kind") == "numeric" and f.get("numeric", "bucket") == "bucket" for f in fields
    )


def stored_problem(doc, fmt: str, versions: tuple) -> str | None:
    """Why a stored file's metadata (a model's header, a hashed dataset's manifest)
    cannot be read: "format" (not that kind of file), "buckets" (numeric fields hashed
    by the version-1 bucket rule), "version" (a version this fmctr does not read), or
    None when it can be."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        return "format"
    version = doc.get("format_version")
    if old_buckets(version, doc.get("schema")):
        return "buckets"
    return None if version in versions else "version"


@dataclass(frozen=True)
class Schema:
    """A resolved schema: the label column and every feature field, in order."""

    label: str | None
    fields: tuple[Field, ...]
    format: str | None = None
    column_names: tuple[str, ...] | None = None  # for formats without a header
    # Recall (fmctr.models.towers): the fields that describe the item; every other
    # field describes the user or the context and goes with the user. `user` keeps
    # what was asked for (--user), for the record and as the default user id.
    item: tuple[str, ...] | None = None
    user: tuple[str, ...] | None = None
    # Each row's values scaled to this squared norm (fmctr.hashing.rownorm); None: as hashed.
    row_norm: float | None = None

    def to_dict(self) -> dict:
        d = {
            "label": self.label,
            "fields": [f.as_dict() for f in self.fields],
            "format": self.format,
            "column_names": list(self.column_names) if self.column_names else None,
        }
        if self.item is not None:  # (a model without towers keeps the header it had)
            d["item"] = list(self.item)
            d["user"] = list(self.user or ())
        if self.row_norm is not None:  # (files without it read as before)
            d["row_norm"] = self.row_norm
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        """The schema a model file or hashed dataset stores, read as untrusted."""
        try:
            schema = cls(
                label=d["label"],
                fields=tuple(Field.from_dict(f) for f in d["fields"]),
                format=d.get("format"),
                column_names=tuple(d["column_names"]) if d.get("column_names") else None,
                item=tuple(d["item"]) if d.get("item") is not None else None,
                user=tuple(d["user"]) if d.get("user") is not None else None,
                row_norm=d.get("row_norm"),
            )
        except (KeyError, TypeError) as e:
            raise BadSchema(f"malformed schema: {e}") from None
        problem = _stored_schema_problem(schema)
        if problem:
            raise BadSchema(f"malformed schema: {problem}")
        return schema

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def has_towers(self) -> bool:
        return self.item is not None

    def segments(self) -> list[tuple[int, bool]]:
        """A row's layout, as fmctr.hashing.tokens writes it: (field index, tag) per
        segment - each single-valued field's own position in order (tag ""), then one
        standardised value per field that has one ("value": fmctr.hashing.standard),
        then the value token of each `exact` field ("exact"), then each multi-valued
        field's bag ("")."""
        fields = list(enumerate(self.fields))
        return [(j, "") for j, f in fields if f.kind != "multi"] + \
            [(j, "value") for j, f in fields if f.standard is not None and f.numeric != "standard"] + \
            [(j, "exact") for j, f in fields if f.kind == "numeric" and f.numeric == "exact"] + \
            [(j, "") for j, f in fields if f.kind == "multi"]

    def side(self, item: bool) -> Schema:
        """The schema of one side of recall: the item fields, or every other field
        (user and context). No label: a catalogue or a user list has none."""
        chosen = set(self.item or ())
        return Schema(label=None, fields=tuple(f for f in self.fields if (f.name in chosen) == item),
                      format=self.format, column_names=None)


def _stored_schema_problem(schema: Schema) -> str | None:
    """What is wrong with a stored schema's types and names, if anything."""
    if not (schema.label is None or isinstance(schema.label, str)):
        return "label must be a column name"
    if schema.format is not None and schema.format not in FORMATS:
        return f"unknown format {schema.format!r}"
    if schema.column_names is not None and not all(isinstance(c, str) for c in schema.column_names):
        return "column_names must be names"
    if schema.row_norm is not None and (isinstance(schema.row_norm, bool) or not isinstance(schema.row_norm, (int, float))
                                            or not math.isfinite(schema.row_norm) or not schema.row_norm > 0):
        return "row_norm must be a number above 0"
    for names in (schema.item, schema.user):
        if names is not None and (not all(isinstance(n, str) for n in names)
                                  or not set(names) <= set(schema.feature_names)):
            return "user and item must name feature columns"
    for f in schema.fields:
        if not isinstance(f.name, str) or f.kind not in KINDS or f.numeric not in NUMERIC_MODES \
                or not isinstance(f.sep, str) or not f.sep:
            return f"field {f.name!r}: a name, a kind ({', '.join(KINDS)}), a numeric mode and a separator"
        if f.standard is not None and f.kind != "numeric":
            return f"field {f.name!r}: only a numeric field has a standardised value"
        if f.numeric == "standard" and f.kind == "numeric" and f.standard is None:
            return f"field {f.name!r}: the numeric mode standard needs its center and scale"
    return None


@dataclass(frozen=True)
class SchemaSpec:
    """What the user asked for. Lists name columns; `None` for `categorical` means
    'every column not named elsewhere'."""

    label: str = "label"
    categorical: tuple[str, ...] | None = None
    numeric: tuple[str, ...] = ()
    multi: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    numeric_mode: str = "auto"
    sep: str = "|"
    format: str | None = None
    column_names: tuple[str, ...] | None = None
    user: tuple[str, ...] = ()  # recall: the columns that describe the user (others are context)
    item: tuple[str, ...] = ()  # recall: the columns that describe the item
    row_norm: bool = True  # with a multi-valued field: scale every row to the training rows' mean norm

    def check(self) -> SchemaSpec:
        if self.numeric_mode not in NUMERIC_MODES:
            raise BadSchema(
                f"unknown numeric mode {self.numeric_mode!r} (choose from {', '.join(NUMERIC_MODES)})"
            )
        if self.format is not None and self.format not in FORMATS:
            raise BadSchema(f"unknown format {self.format!r} (choose from {', '.join(FORMATS)})")
        if not self.sep:
            raise BadSchema("the multi-value separator must not be empty")
        named: dict[str, str] = {}
        groups = {
            "label": (self.label,),
            "categorical": self.categorical or (),
            "numeric": self.numeric,
            "multi": self.multi,
            "ignore": self.ignore,
        }
        for group, names in groups.items():
            for name in names:
                if name in named and named[name] != group:
                    raise BadSchema(f"column {name!r} is both {named[name]} and {group}")
                named[name] = group
        both = [c for c in self.user if c in self.item]
        if both:
            raise BadSchema(f"column {both[0]!r} is in both --user and --item: a column describes one side")
        if self.user and not self.item:
            raise BadSchema("--user needs --item: say which columns describe the item (the others go with the user)")
        return self

    def resolve(self, columns: list[str]) -> Schema:
        """Meet the spec with the data's columns: every named column must exist."""
        if self.format in SPARSE_FORMATS:
            return Schema(
                label=self.label,
                fields=(Field(SPARSE_FIELD, "multi"),),
                format=self.format,
            )
        present = set(columns)
        for group in ("categorical", "numeric", "multi", "ignore"):
            for name in getattr(self, group) or ():
                if name not in present:
                    raise BadSchema(f"{group} column {name!r} is not in the data (columns: {_short(columns)})")
        explicit = set(self.numeric) | set(self.multi) | set(self.ignore) | {self.label}
        if self.categorical is None:
            categorical = [c for c in columns if c not in explicit]
        else:
            categorical = list(self.categorical)
        kinds = {c: "categorical" for c in categorical}
        kinds.update({c: "numeric" for c in self.numeric})
        kinds.update({c: "multi" for c in self.multi})
        fields = tuple(
            Field(c, kinds[c], numeric=self.numeric_mode, sep=self.sep) for c in columns if c in kinds
        )
        if not fields:
            raise BadSchema(f"no feature columns: the data has only {_short(columns)}")
        self._check_sides(columns, [f.name for f in fields])
        return Schema(
            label=self.label,
            fields=fields,
            format=self.format,
            column_names=self.column_names,
            item=tuple(self.item) if self.item else None,
            user=tuple(self.user) if self.item else None,
        )

    def _check_sides(self, columns: list[str], features: list[str]) -> None:
        """Every --user and --item column is a feature of the data."""
        for group in ("user", "item"):
            for name in getattr(self, group):
                if name not in columns:
                    raise BadSchema(f"--{group} column {name!r} is not in the data (columns: {_short(columns)})")
                if name not in features:
                    raise BadSchema(f"--{group} column {name!r} is not a feature (it is the label or ignored)")
        if self.item and set(self.item) >= set(features):
            raise BadSchema("every feature is an --item column: the user side needs at least one")


def _short(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


CRITEO_COLUMNS = ("label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27)))

PRESETS: dict[str, SchemaSpec] = {
    # Criteo display-ads logs: no header; label, 13 integer and 26 hashed categorical columns.
    "criteo": SchemaSpec(
        label="label",
        categorical=tuple(f"C{i}" for i in range(1, 27)),
        numeric=tuple(f"I{i}" for i in range(1, 14)),
        numeric_mode="bucket",
        format="criteo",
        column_names=CRITEO_COLUMNS,
    ),
    # Avazu mobile-ads logs: a header, label `click`, a row id to ignore. A preset names
    # columns, not the format: CSV, TSV or Parquet are recognised from the data.
    "avazu": SchemaSpec(label="click", ignore=("id",)),
}


def _toml():
    """The TOML reader, imported only for a schema file (a few ms every command would pay)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def load_schema_file(path: Path) -> SchemaSpec:
    """Read a schema file (TOML or JSON, chosen by extension)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadSchema(f"{path}: cannot read schema file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadSchema(f"{path}: not valid UTF-8 text") from None
    kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
    try:
        raw = json.loads(text) if kind == "JSON" else _toml().loads(text)
    except (ValueError, RecursionError) as e:  # (the decoders' errors are ValueErrors)
        raise BadSchema(f"{path}: not valid {kind}: {'nested too deeply' if isinstance(e, RecursionError) else e}") from None
    if not isinstance(raw, dict):
        raise BadSchema(f"{path}: a schema file holds a table of keys (label, numeric, ...), not a {type(raw).__name__}")
    allowed = {"label", "categorical", "numeric", "multi", "ignore", "numeric_mode", "sep", "format", "column_names",
               "user", "item", "row_norm"}
    unknown = set(raw) - allowed
    if unknown:
        raise BadSchema(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")
    spec = SchemaSpec()
    for key, value in raw.items():
        if key in ("categorical", "numeric", "multi", "ignore", "column_names", "user", "item"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadSchema(f"{path}: {key} must be a list of column names")
            value = tuple(value)
        elif key == "row_norm":
            if not isinstance(value, bool):
                raise BadSchema(f"{path}: row_norm must be true or false")
        elif not isinstance(value, str):
            raise BadSchema(f"{path}: {key} must be a string")
        spec = replace(spec, **{key: value})
    return spec.check()


def build_spec(
    *,
    preset: str | None = None,
    schema_file: Path | None = None,
    label: str | None = None,
    categorical: list[str] | None = None,
    numeric: list[str] | None = None,
    multi: list[str] | None = None,
    ignore: list[str] | None = None,
    numeric_mode: str | None = None,
    sep: str | None = None,
    format: str | None = None,
    user: list[str] | None = None,
    item: list[str] | None = None,
    row_norm: bool | None = None,
) -> SchemaSpec:
    """Combine a preset or schema file with flags; flags override or extend."""
    if preset is not None and schema_file is not None:
        raise BadSchema("--preset and --schema both describe the columns: give one of them")
    if preset is not None:
        if preset not in PRESETS:
            raise BadSchema(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        spec = PRESETS[preset]
    elif schema_file is not None:
        spec = load_schema_file(schema_file)
    else:
        spec = SchemaSpec()
    changes: dict = {}
    if label is not None:
        changes["label"] = label
    if categorical:
        changes["categorical"] = (*(spec.categorical or ()), *categorical)
    for key, value in (("user", user), ("item", item)):
        if value:
            changes[key] = tuple(value)  # (flags replace a schema file's sides)
    for key, value in (("numeric", numeric), ("multi", multi), ("ignore", ignore)):
        if value:
            # A column moved to another kind leaves the preset's categorical list.
            changes[key] = (*getattr(spec, key), *value)
    moved = set(numeric or ()) | set(multi or ()) | set(ignore or ())
    if moved and spec.categorical is not None and not categorical:
        changes["categorical"] = tuple(c for c in spec.categorical if c not in moved)
    if numeric_mode is not None:
        changes["numeric_mode"] = numeric_mode
    if sep is not None:
        changes["sep"] = sep
    if row_norm is not None:
        changes["row_norm"] = row_norm
    if format is not None:
        if spec.format == "criteo" and format != "criteo":
            raise BadSchema(f"--format {format} conflicts with the criteo preset, which reads the Criteo raw format")
        changes["format"] = format
    return replace(spec, **changes).check()
