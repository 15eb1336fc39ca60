"""The core layer: what ``cluster``, ``tasks`` and ``pipelines`` all build on (the constraint
library of the configs), importing none of them."""
