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


def _sig(value) -> str:
    """Four significant digits: contributions and pair terms span many decades."""
    return "" if value is None else f"{value:.4g}"


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
    """Runs of fields of one kind on one row each (Criteo's 39 fields on 2 rows)."""
    title = f"schema (label {schema.get('label')!r}, format {schema.get('format') or 'recognised from the data'})"
    if schema.get("row_norm"):  # (fmctr.hashing.rownorm)
        title += f"; every row scaled to squared norm {schema['row_norm']:.4g} (--row-norm)"
    table = Table(title=title, title_justify="left")
    for name, overflow in (("fields", "fold"), ("kind", "ellipsis"), ("how", "ellipsis")):
        table.add_column(name, overflow=overflow)
    runs: list[tuple[list[str], str, str]] = []
    for f in schema.get("fields", []):
        how = {"numeric": f"--numeric-mode {f.get('numeric')}", "multi": f"split on {f.get('sep')!r}"}.get(f.get("kind"), "")
        if f.get("standard"):  # (fmctr.hashing.standard: one per field, so no run shares it)
            alone = "" if f.get("numeric") == "standard" else ", and"
            how += "{} its value standardised (center {:.4g}, scale {:.4g})".format(alone, *f["standard"])
        if runs and runs[-1][1:] == (str(f.get("kind")), how):
            runs[-1][0].append(str(f.get("name")))
        else:
            runs.append(([str(f.get("name"))], str(f.get("kind")), how))
    for names, kind, how in runs:
        table.add_row(", ".join(names), kind, how)
    return table


def _training_rows(info: dict) -> list[tuple[str, str]]:
    t = info["training"]
    rows = [(k.replace("_", " "), _metrics(v) if isinstance(v, dict) else _num(v)) for k, v in t.items()
            if v not in (None, {}, "")]
    for group, options in (info.get("config") or {}).items():
        if isinstance(options, dict):
            shown = {k: v for k, v in options.items() if k != "lr_by_epoch"}
            rows.append((f"config: {group}", ", ".join(f"{k}={v}" for k, v in shown.items())))
    if info.get("tune"):
        rows.append(("tuned", str(info["tune"].get("summary") or info["tune"].get("options"))))
    if info.get("blend"):
        from fmctr.training.blend import describe  # (a model trained with --loss blend only)

        rows.append(("blend", describe(info["blend"]).removeprefix("blend: ")))
    return rows


def _metrics(m: dict) -> str:
    return ", ".join(f"{k} {_num(v)}" for k, v in m.items())


def history_table(history: list[dict], title: str, best: int | None, ranked: bool = False) -> Table:
    """Per epoch: the training loss, the check's AUC and logloss - or, for a model
    trained from positives (`ranked`), its P@10 and NDCG@10 over the catalogue - rate
    and speed."""
    table = Table(title=title, title_justify="left")
    checks = (("precision@10", "valid P@10"), ("ndcg@10", "valid NDCG@10")) if ranked else \
        (("auc", "valid AUC"), ("logloss", "valid logloss"))
    for name in ("epoch", "train loss" if ranked else "train logloss", *(c for _, c in checks), "lr", "rows/s"):
        table.add_column(name, justify="right")
    for e in history:
        valid = e.get("valid") or {}
        mark = " *" if e.get("epoch") == best else ""
        table.add_row(f"{e.get('epoch')}{mark}", _num(e.get("train_logloss")), *(_num(valid.get(k)) for k, _ in checks),
                      _num(e.get("lr"), 3), _num(round(e.get("rows_per_s") or 0)))
    return table


def _rivals_said(selection: dict) -> str:
    """Which rivals of the defaults the held-out rows tried and kept (models from before
    the rivals say "regularisation": only the factors' L2 was chosen)."""
    old = {"defaults": "; factors' L2: the defaults'", "rival": "; factors' L2: no touch L2, more --l2-all-factors"}
    rivals = selection.get("rivals")
    if not isinstance(rivals, dict):
        return old.get(selection.get("regularisation"), "")
    kept = ", ".join(map(str, rivals.get("kept") or [])) or "none"
    return f"; rivals of the defaults tried: {', '.join(map(str, rivals.get('tried') or []))}, kept: {kept}"


def _refits_said(selection: dict) -> str:
    """How many refits (each with a seed of its own) were merged into the model."""
    refits = selection.get("refits")
    if not isinstance(refits, dict):
        return ""
    return f"; {refits.get('count')} refits merged (dim {refits.get('dim_each')} each, seeds " \
           f"{', '.join(map(str, refits.get('seeds') or []))})"


def info_tables(info: dict) -> list:
    out = [_pairs("model", _model_rows(info))]
    if isinstance(info.get("schema"), dict):
        out.append(_schema_table(info["schema"]))
    if info["training"] or info.get("config"):
        out.append(_pairs("training", _training_rows(info)))
    ranked = "loss" in info["training"]  # (a model trained from positives: checked by ranking)
    if info["selection"]:
        s = info["selection"]
        held = f"{_num(s['holdout_rows'])} held-out rows" if s.get("holdout_rows") else "held-out positives"
        chosen = s.get("epochs") or s.get("best_epoch")
        out.append(history_table(s["history"], f"epochs chosen on {held}: {chosen}{_rivals_said(s)}{_refits_said(s)}",
                                 s.get("best_epoch"), ranked))
    if info["history"]:
        best = info["training"].get("best_epoch") if info["training"].get("valid_rows") else None
        refit = " (the first refit on every row)" if (info["selection"] or {}).get("refits") else " (the refit on every row)"
        out.append(history_table(info["history"], "epochs" + (refit if info["selection"] else ""), best, ranked))
    return out


def _name(field, token, tokens: int = 1) -> str:
    if field is None:
        return "(not in the data)"
    shown = f"{field}={token if token != '' else '(missing)'}"
    return shown + (f" (+{tokens - 1} more: collision)" if tokens > 1 else "")


def features_table(features: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in (("feature", "left"), ("index", "right"), ("count", "right"), ("weight", "right"),
                          ("|v|", "right"), ("mean |contribution|", "right")):
        table.add_column(name, justify=justify)
    for f in features:
        table.add_row(_name(f["field"], f["token"], f["tokens"]), str(f["index"]), _num(f["count"]),
                      f"{f['weight']:+.4g}", f"{f['factor_norm']:.4g}",
                      _sig(f.get("mean_abs_contribution")))
    return table


def pairs_table(pairs: dict) -> Table:
    note = "" if pairs["exact"] else f" (among the {pairs['candidates']:,} most promising features; not proven exact)"
    table = Table(title="top interactions by mean |pair term| over the data" + note, title_justify="left")
    for name, justify in (("feature a", "left"), ("feature b", "left"), ("together", "right"),
                          ("<v_a, v_b>", "right"), ("mean |term|", "right")):
        table.add_column(name, justify=justify)
    for p in pairs["pairs"]:
        a, b = p["a"], p["b"]
        table.add_row(_name(a["field"], a["token"], a["tokens"]), _name(b["field"], b["token"], b["tokens"]),
                      _num(p["count"]), f"{p['effect']:+.4g}", _sig(p["mean_abs"]))
    return table


def fields_table(fields: dict) -> Table:
    names = fields["fields"]
    if len(names) > 10:
        table = Table(title="strongest field pairs (mean |pair terms| between them, per row)", title_justify="left")
        for name, justify in (("field a", "left"), ("field b", "left"), ("mean |terms|", "right")):
            table.add_column(name, justify=justify)
        for p in fields["top"]:
            table.add_row(p["a"], p["b"] if p["b"] != p["a"] else f"{p['b']} (within)", _sig(p["mean_abs"]))
        return table
    table = Table(title="field x field interaction strength (mean |pair terms| per row)", title_justify="left")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for name, row in zip(names, fields["matrix"]):
        table.add_row(name, *[_sig(v) for v in row])
    return table


def health_table(h: dict) -> Table:
    title = (f"hash space: {h['tokens']:,} tokens on {h['indices_used']:,} of 2^{h['bits']} indices; "
             f"{h['share_of_occurrences_shared']:.2%} of occurrences on a shared index; --bits: {h['advice']}")
    table = Table(title=title, title_justify="left")
    for name, justify in (("field", "left"), ("distinct tokens", "right"), ("indices", "right"),
                          ("tokens sharing an index", "right"), ("occurrences on shared", "right")):
        table.add_column(name, justify=justify)
    fields = h["fields"]
    if len(fields) > 12:  # the fields where collisions can happen: those with the most tokens
        fields = sorted(fields, key=lambda f: -f["tokens"])[:12]
        table.caption = f"the 12 of {len(h['fields'])} fields with the most tokens (--json lists all)"
    for f in fields:
        table.add_row(f["field"], _num(f["tokens"]), _num(f["indices"]), _num(f["tokens_sharing"]),
                      f"{f['share_of_occurrences_shared']:.2%}")
    return table


def inspect_tables(found: dict) -> list:
    out = [f"bias {found['bias']:+.4f}, dim {found['dim']}, {found['indices_stored']:,} indices stored"
           + (f"; data {found['data']}: {found['rows']:,} rows reach {found['indices_reached']:,} indices"
              if "data" in found else "; --data FILE names the indices")]
    out.append(features_table(found["features_by_weight"], "top features by |weight|"))
    if "data" not in found:
        return out
    out.append(features_table(found["features_by_contribution"], "top features by mean |contribution| to the logit"))
    if found["pairs"]["pairs"]:
        out.append(pairs_table(found["pairs"]))
    if found["fields"]:
        out.append(fields_table(found["fields"]))
    out.append(health_table(found["health"]))
    return out
