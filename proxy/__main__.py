"""`python -m proxy` is the `sidecache` command."""

import sys

from .cli import main

sys.exit(main())
