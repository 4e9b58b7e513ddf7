from qeval.cli import main

raise SystemExit(main())
