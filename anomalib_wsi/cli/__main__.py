"""``python -m anomalib_wsi.cli``: the ``anomalib-wsi`` command."""

import sys

from anomalib_wsi.cli import main

sys.exit(main())
