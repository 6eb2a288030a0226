import sys

from helixrun.cli import main

sys.exit(main())
