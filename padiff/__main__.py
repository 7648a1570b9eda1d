"""``python -m padiff``: the ``padiff`` command."""

import sys

from .cli import main

sys.exit(main())
