"""Everything that knows what the kernel's IPVS table looks like."""
