from shardflow.pipelines.cli import main
import sys
sys.exit(main())
