from candled.cli import main

raise SystemExit(main())
