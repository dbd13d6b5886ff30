import sys

from stt_maintenance.main import main

sys.exit(main())
