"""``python -m diffinterp``: the ``diffinterp`` command."""

import sys

from diffinterp.cli import main

sys.exit(main())
