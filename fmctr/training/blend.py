"""`--loss blend`: models trained apart from the same positives - logistic on sampled
negatives (an FM that learns where each positive sits against drawn items), implicit
ALS (fmctr.models.ials: every unobserved pair a weighted 0) and, for catalogues the
full softmax can score (fmctr.models.softmax), softmax (the positive against the whole
catalogue) - kept as one FM whose logit is their weighted sum (fmctr.models.fm.summed:
the factors side by side), so recall, its towers and the model file are those of any
FM.

The losses err differently: on the carves of MovieLens-100k's training positives
(bench/recall.py) logistic + ALS ranked above either alone on both protocols, and
adding softmax above that again. The candidates - each model alone, ALS at each of
SCALES against logistic, and the same with softmax added at SOFTMAX_SCALE - are
scored by NDCG@10 on the held-out positives that chose each one's epochs; one replaces
the default weights only when it is above them by more than the noise (_kept).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

MEMBERS = {"logistic": "logistic on sampled negatives", "als": "implicit ALS",
           "softmax": "softmax over the catalogue"}
# The ALS model's weight against the logistic one's (an ALS score is about 0..1, a
# logistic one a logit of several units): candidates, and the default weight (the
# carves' choice at fixed weights, README "Training from positives only").
SCALES = (1.0, 3.0, 10.0, 30.0, 100.0)
DEFAULT_SCALE = 10.0
# softmax's weight, fixed: at ALS 10 the carves (NDCG@10, LightFM's / Microsoft's)
# gave 0.2401 / 0.2752 at 0.3, 0.2423 / 0.2767 at 1 and 0.2426 / 0.2754 at 3.
SOFTMAX_SCALE = 1.0


def candidates(members) -> dict[str, dict[str, float]]:
    """Each candidate's name and its models' weights, from the models trained."""
    out = {name: {name: 1.0} for name in members}
    for scale in SCALES:
        out[f"{scale:g} x als + logistic"] = {"als": scale, "logistic": 1.0}
        if "softmax" in members:
            out[f"{scale:g} x als + logistic + softmax"] = {"als": scale, "logistic": 1.0, "softmax": SOFTMAX_SCALE}
    return out


def blended(runs: dict, check) -> tuple:
    """(the blended TrainResult, the held-out run of the model kept alone - or of the
    logistic one in a blend) from each model's (run, held-out run); `check`: the
    held-out positives (a fmctr.training.ranked.RankingCheck), None when nothing was
    held out. The default weights - DEFAULT_SCALE, with softmax where it trained - stay
    unless a candidate beats them on the held-out positives beyond the noise."""
    from fmctr.models.fm import summed  # (here, not above: `fmctr info` shows describe() without numba)
    from fmctr.training.ranked import K

    options = candidates(runs)
    default = f"{DEFAULT_SCALE:g} x als + logistic" + (" + softmax" if "softmax" in runs else "")
    per_user: dict[str, np.ndarray] = {}
    if check is not None:
        vectors = {name: check.vectors(chose.weights) for name, (_, chose) in runs.items()}
        for name, scales in options.items():
            # (what summed() scores, from the towers: a model's vectors, each side times
            # sqrt(its weight), side by side - no table of every feature per candidate)
            users, items = (np.hstack([np.sqrt(scale) * vectors[m][side] for m, scale in scales.items()])
                            for side in (0, 1))
            per_user[name] = check.ndcg_per_user(users, items)
    best = _kept(per_user, default)
    scores = {name: float(values.mean()) if len(values) else 0.0 for name, values in per_user.items()}
    kept = options[best]
    note = {"chosen": best, "default": default, "kept": kept,
            "epochs": {name: run.config.epochs for name, (run, _) in runs.items()},
            f"held_out_ndcg@{K}": {name: round(float(score), 6) for name, score in scores.items()}}
    if len(kept) == 1:
        alone, its_choice = runs[best]
        return replace(alone, notes={"blend": note}), its_choice
    logistic, chose = runs["logistic"]
    weights = summed([_with_met(runs[m][0].weights) for m in kept], list(kept.values()))
    config = logistic.config.with_options(dim=weights.dim)
    return replace(logistic, weights=weights, config=config, optimizer=None, notes={"blend": note}), chose


def _kept(per_user: dict[str, np.ndarray], default: str) -> str:
    """The default weights, unless a candidate's held-out NDCG@10 beats theirs by more
    than RIVAL_MARGIN standard errors of the user-by-user difference (then the best of
    those that do). The candidates differ by about 0.002 on MovieLens-100k's carves,
    within the noise of 10% of the positives held out: picking the plain best cost
    0.0017 NDCG@10 against keeping the default (0.2530 against 0.2547, six carves)."""
    from fmctr.training.selection import rival_wins  # (not above: as in blended)

    beat = [name for name in per_user
            if name != default and rival_wins(-per_user[default], -per_user[name])]
    return max(beat, key=lambda name: per_user[name].mean()) if beat else default


def _with_met(w):
    """`w` with the rows it met (FMWeights.met) where it does not know them: its rows
    that are not zero (training leaves a row it never met at zero) - so that summed()
    fills only those, not a table of every feature x the models' dims (at the default
    2^22 features and three models of 64, 3 GB)."""
    return w if w.met is not None else replace(w, met=w.nonzero_rows())


def describe(note: dict) -> str:
    """One line on what the blend kept, for the progress output and `fmctr info`."""
    metric, held = next(((key.removeprefix("held_out_"), value) for key, value in note.items()
                         if key.startswith("held_out_")), ("", {}))
    chosen = note["chosen"]
    if isinstance(chosen, float):  # (a model file of the two-model blend: its ALS weight)
        chosen = f"{chosen:g} x als + logistic"
    kept = chosen if " x " in chosen else f"{chosen} alone"
    if not held:
        return f"blend: kept {kept} (no held-out positives to choose: the default weights)"
    scores = ", ".join(f"{name} {held[name]:.4f}" for name in MEMBERS if name in held)
    best = max(held, key=held.get)
    if chosen == note.get("default") and best != chosen:  # (files from before the margin name no default)
        scores += f"; the default weights kept: {best} {held[best]:.4f} is within the noise"
    return f"blend: kept {kept}, held-out {metric.upper()} {held[str(note['chosen'])]:.4f} ({scores})"
