from weightwarden.agent.cli.main import main

raise SystemExit(main())
