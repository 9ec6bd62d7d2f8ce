"""``python -m eventplatform``: the same as the ``eventplatform`` command."""

import sys

from eventplatform.cli.main import main

sys.exit(main())
