"""``python -m flowrl.scripts ...`` (also what ``torchrun -m flowrl.scripts`` runs)."""

import sys

from flowrl.scripts.cli import main

sys.exit(main())
