"""``bench reproduce``: every registered model, every ablation arm and the reports on the embedded
benchmark (SynthScenes, tiny), in one command.

``plan.py`` builds the list of steps from the registries (models, ablation folders),
``steps.py`` holds what one step does (run, shared run, skip, report), ``execute.py`` runs the
steps one after the other with progress lines and prints the summary.
"""
