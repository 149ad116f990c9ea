"""Director failover: VRRP instances and the resources each one moves to the master."""
