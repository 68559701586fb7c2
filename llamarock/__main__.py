from llamarock.cli import main

raise SystemExit(main())
