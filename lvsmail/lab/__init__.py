"""The lab: run lvsmail against a real kernel (IPVS, IPIP) in network namespaces.

The host that develops lvsmail may lack IPVS and IPIP, so the lab can boot a small
virtual machine with a stock distribution kernel and run a command there; inside it,
a topology of network namespaces plays client, router, director and real servers.
"""
