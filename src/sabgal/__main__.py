from sabgal.cli import main

raise SystemExit(main())
