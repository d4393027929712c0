"""`python -m tflrewrite`."""

import sys

from tflrewrite.cli import main

sys.exit(main())
