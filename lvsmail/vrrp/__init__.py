"""VRRP version 3 (RFC 5798): the director pair's failover protocol, as a pure state machine plus I/O."""
