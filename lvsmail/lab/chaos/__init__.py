"""``lvsmail lab chaos``: a seeded run of faults against the lab cluster while MTA-like clients send and read mail."""
