from stt_cli.main import main

raise SystemExit(main())
