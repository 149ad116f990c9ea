"""Real-server network setup as a library: plan the steps, apply them, undo them.

Side effects sit behind small interfaces (sysctls, links/addresses/routes, kernel
modules), each with a fake; only the iproute module imports pyroute2.
"""
