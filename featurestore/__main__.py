"""`python -m featurestore ...` (see featurestore.cli)."""

import sys

from featurestore.cli import main

sys.exit(main())
