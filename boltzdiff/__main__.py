"""``python -m boltzdiff``: the ``boltzdiff`` command, also as ``torchrun ... -m boltzdiff train ...``."""

import sys

from boltzdiff.cli import main

sys.exit(main())
