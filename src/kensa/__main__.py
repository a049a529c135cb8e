import sys

from kensa.cli.main import main

sys.exit(main())
