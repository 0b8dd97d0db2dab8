import sys

from guestfail.cli import main

sys.exit(main())
