from fantasy.cli import main

raise SystemExit(main())
