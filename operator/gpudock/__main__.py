from gpudock.cli.main import main

raise SystemExit(main())
