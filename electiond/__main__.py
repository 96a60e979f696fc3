import sys

from electiond.daemon import main

sys.exit(main())
