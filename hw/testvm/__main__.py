"""`python -m hw.testvm [OPTIONS] -- CMD ARGS...`: the same as `canbridge testvm ...`."""

import sys

from hw.testvm.runner import main

sys.exit(main(sys.argv[1:]))
