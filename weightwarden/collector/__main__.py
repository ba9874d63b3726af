from weightwarden.collector.cli.main import main

raise SystemExit(main())
