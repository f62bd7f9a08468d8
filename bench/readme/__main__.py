"""``python -m bench.readme``: run :func:`bench.readme.main`."""

import sys

from bench.readme import main

sys.exit(main())
