"""`python -m bridge.hw.testvm [OPTIONS] -- CMD ARGS...`: the same as `canbridge testvm ...`."""

import sys

from bridge.hw.testvm.runner import main

sys.exit(main(sys.argv[1:]))
