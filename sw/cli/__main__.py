"""``python -m gsaccel.sw.cli``: the ``gsaccel`` command."""

import sys

from .main import main

sys.exit(main())
