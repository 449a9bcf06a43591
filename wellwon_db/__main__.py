"""``python -m wellwon_db``: the ``wellwon-db`` command."""

import sys

from wellwon_db.cli._cli import main

sys.exit(main())
