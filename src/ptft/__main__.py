import sys

from ptft.cli import main

sys.exit(main())
