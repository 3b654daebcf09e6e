"""``python -m sota_ablate``."""

import sys

from sota_ablate.cli import main

sys.exit(main())
