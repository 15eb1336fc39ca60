import sys

from shardflow.pipelines.interface.cli import main

sys.exit(main())
