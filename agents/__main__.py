"""python -m agents: the masb command line."""
import sys

from agents.cli import main

sys.exit(main())
