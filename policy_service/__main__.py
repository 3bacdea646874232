import sys

from policy_service.cli import main

sys.exit(main())
