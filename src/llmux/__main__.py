import sys

from llmux.cli import main

sys.exit(main())
