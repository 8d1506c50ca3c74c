"""``python -m probattn`` (also what ``torchrun -m probattn train ...`` runs)."""

import sys

from probattn.cli import main

sys.exit(main())
