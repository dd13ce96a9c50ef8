"""``python -m insectarium.console`` = ``insectarium-console``."""

import sys

from .cli import main

sys.exit(main())
