"""``python3 -m lvsmail``: the same as the ``lvsmail`` console script."""

from lvsmail.cli import main

main()
