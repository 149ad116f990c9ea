"""The terminal dashboard: frames from a director's status (view) and the interactive loop (app)."""
