from kochat.cli import main

raise SystemExit(main())
