from mtml.cli import main

raise SystemExit(main())
