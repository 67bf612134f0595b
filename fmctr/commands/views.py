"""Tables for people (rich, on stderr) of what `fmctr info` and `fmctr inspect` found.

Light on purpose: rich only, so that `fmctr info` starts fast.
"""

from __future__ import annotations

import math

from rich.table import Table


def _num(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def _bytes(n) -> str:
    if not isinstance(n, int):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def _pairs(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _model_rows(info: dict) -> list[tuple[str, str]]:
    h, sizes = info["hashing"] or {}, info["sizes"]
    opt = info.get("optimizer")
    verified = {None: "(not verified: --verify reads the tensors and checks it)", True: "(verified)"}[info["verified"]]
    rows = [
        ("file", f"{info['file']} ({_bytes(sizes['file'])})"),
        ("format", f"version {info['format_version']}, written by {info['written_by']}"),
        ("model", f"{info['model']}, dim {info['dim']}" + (" (logistic regression)" if info["dim"] == 0 else "")),
        ("hashing", f"{h.get('function')}, --bits {h.get('bits')} ({_num(info['num_features'])} indices), "
                    f"--hash-seed {h.get('seed')}"),
        ("indices stored", f"{_num(info['indices_stored'])} (trained; every other index is zero)"),
        ("min-count", _num(info["min_count"]) if info["min_count"] else "off"),
        ("optimizer state", f"{opt.get('kind')}, step {_num(opt.get('step'))}" if isinstance(opt, dict) else "none"),
        ("sizes", ", ".join(f"{k} {_bytes(v)}" for k, v in sizes.items() if k != "file" and v)),
        ("sha256", f"{info['sha256']} {verified}"),
    ]
    if info["checkpoint"]:
        rows.append(("checkpoint", "yes: an interrupted run; fmctr train --resume continues it"))
    return rows


def _schema_table(schema: dict) -> Table:
    title = f"schema (label {schema.get('label')!r}, format {schema.get('format') or 'recognised from the data'})"
    table = Table(title=title, title_justify="left")
    for name in ("field", "kind", "how"):
        table.add_column(name)
    for f in schema.get("fields", []):
        how = {"numeric": f"--numeric-mode {f.get('numeric')}", "multi": f"split on {f.get('sep')!r}"}.get(f.get("kind"), "")
        table.add_row(str(f.get("name")), str(f.get("kind")), how)
    return table


def _training_rows(info: dict) -> list[tuple[str, str]]:
    t = info["training"]
    rows = [(k.replace("_", " "), _metrics(v) if isinstance(v, dict) else _num(v)) for k, v in t.items()]
    for group, options in (info.get("config") or {}).items():
        if isinstance(options, dict):
            shown = {k: v for k, v in options.items() if k != "lr_by_epoch"}
            rows.append((f"config: {group}", ", ".join(f"{k}={v}" for k, v in shown.items())))
    if info.get("tune"):
        rows.append(("tuned", str(info["tune"].get("summary") or info["tune"].get("options"))))
    return rows


def _metrics(m: dict) -> str:
    return ", ".join(f"{k} {_num(v)}" for k, v in m.items())


def history_table(history: list[dict], title: str, best: int | None) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("epoch", "train logloss", "valid AUC", "valid logloss", "lr", "rows/s"):
        table.add_column(name, justify="right")
    for e in history:
        valid = e.get("valid") or {}
        mark = " *" if e.get("epoch") == best else ""
        table.add_row(f"{e.get('epoch')}{mark}", _num(e.get("train_logloss")), _num(valid.get("auc")),
                      _num(valid.get("logloss")), _num(e.get("lr"), 3), _num(round(e.get("rows_per_s") or 0)))
    return table


def info_tables(info: dict) -> list:
    out = [_pairs("model", _model_rows(info))]
    if isinstance(info.get("schema"), dict):
        out.append(_schema_table(info["schema"]))
    if info["training"] or info.get("config"):
        out.append(_pairs("training", _training_rows(info)))
    if info["selection"]:
        s = info["selection"]
        out.append(history_table(s["history"], f"epochs chosen on {_num(s.get('holdout_rows'))} held-out rows: "
                                               f"{s.get('epochs')}", s.get("best_epoch")))
    if info["history"]:
        best = info["training"].get("best_epoch") if info["training"].get("valid_rows") else None
        out.append(history_table(info["history"], "epochs" + (" (the refit on every row)" if info["selection"] else ""),
                                 best))
    return out
