import sys

from mmstudy.cli import main

sys.exit(main())
