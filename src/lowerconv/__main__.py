"""``python -m lowerconv``: the same command line as the ``lowerconv`` script."""

import sys

from .cli import main

sys.exit(main())
