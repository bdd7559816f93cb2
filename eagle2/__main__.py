"""python -m eagle2 {generate,bench,train}"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
