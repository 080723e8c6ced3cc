"""``python -m stress`` is ``python stress/run.py``."""
import sys

from .run import main

sys.exit(main())
