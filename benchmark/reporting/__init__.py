"""Reports built from result files only: tables (Markdown now; LaTeX and plots later)."""
