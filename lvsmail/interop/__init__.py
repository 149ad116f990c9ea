"""keepalived and ldirectord: their configuration files imported into a cluster file, and exported from one.

Kept apart from ``lvsmail.config`` (which loads and validates lvsmail's own file) because
these modules speak other tools' languages: a migration's way in and a comparison's way out.
They build on the loader, never the other way round.
"""
