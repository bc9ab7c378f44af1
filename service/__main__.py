"""``python -m service``: the same as ``monolith-serve``."""

from service.cli import main

main()
