"""``python -m paretoopt.integrations.bench.report --json bench.json --out docs``."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
