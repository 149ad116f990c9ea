"""lvsmail: a toolkit for running a mail cluster behind Linux Virtual Server."""

__version__ = "0.1.0"
