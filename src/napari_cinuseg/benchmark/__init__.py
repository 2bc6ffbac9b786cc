"""The paper's experiments: ``run.py`` trains the protocols' steps with each method and scores
them; ``report.py`` turns the results into the summary, Table 1 layout and curves."""
