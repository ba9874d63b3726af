from weightwarden.agent.cli import main

raise SystemExit(main())
