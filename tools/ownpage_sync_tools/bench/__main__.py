from ownpage_sync_tools.bench.main import main

raise SystemExit(main())
