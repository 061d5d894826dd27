"""``python -m detgn SUBCOMMAND ...``: the ``detgn`` command (also under ``torchrun -m detgn``)."""
import sys

from detgn.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
