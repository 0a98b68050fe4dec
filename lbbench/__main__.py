from lbbench.cli import main

raise SystemExit(main())
