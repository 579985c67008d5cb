"""``python -m interlink.gateway --config gateway.yaml``."""

import sys

from interlink.gateway.app import main

sys.exit(main())
