import sys

from policy_service.cli.main import main

sys.exit(main())
