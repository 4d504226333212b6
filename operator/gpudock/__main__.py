from gpudock.cli import main

raise SystemExit(main())
