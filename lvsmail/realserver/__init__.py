"""A real server joining and leaving the cluster: network, persistence, mail stack, storage, registration."""
