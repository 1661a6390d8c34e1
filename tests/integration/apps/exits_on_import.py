"""An app module that calls sys.exit() while it is imported (a daemon config error)."""

import sys

sys.exit(3)
