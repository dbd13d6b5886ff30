from stt_ingest.main import main

raise SystemExit(main())
