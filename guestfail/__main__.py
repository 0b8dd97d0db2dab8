import sys

from guestfail.cli import main

if __name__ == "__main__":  # `python3 -m guestfail`; importing it (%pyproject_check_import) runs nothing
    sys.exit(main())
