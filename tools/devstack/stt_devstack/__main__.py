import sys

from stt_devstack.cli import main

sys.exit(main())
