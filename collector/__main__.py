from weightwarden.collector.cli import main

raise SystemExit(main())
