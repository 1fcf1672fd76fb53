"""Reports built from result files only: the all-runs table, the model comparison and ablation
tables (Markdown and LaTeX), bootstrap intervals, paired tests, paper claims and figures."""
