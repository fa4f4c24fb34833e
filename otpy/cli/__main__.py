"""``python -m otpy.cli``: the same as the ``otpy`` console script."""

import sys

from otpy.cli import main

sys.exit(main())
