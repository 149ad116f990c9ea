"""Cluster configuration: load and validate the cluster file (other tools' files: lvsmail.interop)."""

from lvsmail.config.errors import ConfigError, Problem
from lvsmail.config.loader import dump_cluster, load_cluster, parse_cluster

__all__ = ["ConfigError", "Problem", "dump_cluster", "load_cluster", "parse_cluster"]
