from taskprompter.cli import main

raise SystemExit(main())
