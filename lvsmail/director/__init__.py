"""The director: turns a cluster file into the kernel's IPVS table and keeps it so."""
