"""Analysis: Dice and confusion (metrics), a model scored on labelled data (evaluation), counts,
areas and the per-nucleus table (measurements), the forgetting report (forgetting) and the
paper's experiments (benchmark)."""
