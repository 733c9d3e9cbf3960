import sys

from grainvl.cli import main

sys.exit(main())
