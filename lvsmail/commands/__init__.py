"""Command-line groups, one module per role (director, realserver, config, lab)."""
