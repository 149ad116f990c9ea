"""The desired IPVS table, now built in lvsmail.ipvs.desired; re-exported here for the daemon until it moves."""

from lvsmail.ipvs.desired import (  # noqa: F401  (re-exported names)
    Health,
    desired_table,
    desired_timeouts,
    dest_entry,
    service_entry,
    service_key,
    service_settings,
)
