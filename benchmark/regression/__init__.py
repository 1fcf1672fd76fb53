"""``bench regress``: the tiny suite's metrics against committed baselines, under per-metric tolerances.

``suite.py`` runs the suite (or reads result files), ``compare.py`` compares them with the
baseline files, ``tolerances.py`` holds the per-metric rules.
"""
