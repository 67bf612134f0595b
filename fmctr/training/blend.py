"""`--loss blend`: two models trained apart from the same positives - logistic on
sampled negatives (an FM that learns where each positive sits against drawn items)
and implicit ALS (fmctr.models.ials: every unobserved pair a weighted 0) - and kept as
one FM whose logit is their weighted sum (fmctr.models.fm.summed: the factors side by
side), so recall, its towers and the model file are those of any FM.

The two losses err differently: on the carves of MovieLens-100k's training positives
(bench/recall.py) their sum ranked above either alone on both protocols. The weight of
the ALS model against the logistic one is chosen, with each model alone as a
candidate too, by NDCG@10 on the held-out positives that chose each one's epochs.
"""

from __future__ import annotations

from dataclasses import replace

# The ALS model's weight against the logistic one's (an ALS score is about 0..1, a
# logistic one a logit of several units): candidates, and the weight where nothing is
# held out to choose (the carves' choice at fixed weights, README "Training from
# positives only").
SCALES = (1.0, 3.0, 10.0, 30.0, 100.0)
DEFAULT_SCALE = 10.0


def blended(runs: dict, check) -> tuple:
    """(the blended TrainResult, the held-out run of the model kept alone - or of the
    logistic one in a blend) from each loss's (run, held-out run); `check`: the
    held-out positives (a fmctr.training.ranked.RankingCheck), None when nothing was
    held out (then DEFAULT_SCALE)."""
    from fmctr.models.fm import summed  # (here, not above: `fmctr info` shows describe() without numba)
    from fmctr.training.ranked import K

    (logistic, chose), (als, als_chose) = runs["logistic"], runs["als"]
    scores: dict[str, float] = {}
    if check is None:
        best = DEFAULT_SCALE
    else:
        candidates = {"logistic": chose.weights, "als": als_chose.weights}
        candidates.update({scale: summed([als_chose.weights, chose.weights], [scale, 1.0]) for scale in SCALES})
        scores = {name: check.measure(weights)[f"ndcg@{K}"] for name, weights in candidates.items()}
        best = max(scores, key=scores.get)
    note = {"chosen": best, "epochs": {"logistic": logistic.config.epochs, "als": als.config.epochs},
            f"held_out_ndcg@{K}": {str(name): round(float(score), 6) for name, score in scores.items()}}
    if best in ("logistic", "als"):
        alone, its_choice = (logistic, chose) if best == "logistic" else (als, als_chose)
        return replace(alone, notes={"blend": note}), its_choice
    weights = summed([als.weights, logistic.weights], [best, 1.0])
    config = logistic.config.with_options(dim=weights.dim)
    return replace(logistic, weights=weights, config=config, optimizer=None, notes={"blend": note}), chose


def describe(note: dict) -> str:
    """One line on what the blend kept, for the progress output and `fmctr info`."""
    metric, held = next(((key.removeprefix("held_out_"), value) for key, value in note.items()
                         if key.startswith("held_out_")), ("", {}))
    chosen = note["chosen"]
    kept = f"{chosen} alone" if chosen in ("logistic", "als") else f"{chosen:g} x als + logistic"
    if not held:
        return f"blend: kept {kept} (no held-out positives to choose: the default weight)"
    scores = ", ".join(f"{name} {held[name]:.4f}" for name in ("logistic", "als"))
    return f"blend: kept {kept}, held-out {metric.upper()} {held[str(chosen)]:.4f} ({scores})"
