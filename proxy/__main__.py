"""`python -m proxy` is the `sidecache` command."""

import sys

from proxy.cli import main

sys.exit(main())
