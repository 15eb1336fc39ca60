import sys

from shardflow.pipelines.cli import main

sys.exit(main())
