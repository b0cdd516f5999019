"""`python -m ai_gateway` runs the CLI."""

import sys

from ai_gateway.cli import main

sys.exit(main())
