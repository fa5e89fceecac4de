"""``python -m diffinterp.cli``: the ``diffinterp`` command."""

import sys

from diffinterp.cli import main

sys.exit(main())
