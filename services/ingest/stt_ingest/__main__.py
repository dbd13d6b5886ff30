import sys

# structlog imports rich (and through it pygments) when they are installed, for its console
# renderer and pretty tracebacks; ingest writes JSON lines and uses neither. Keeping them out saves
# about 3 MB in every ingest process (peak RSS is budgeted: bench/ingest_upload.py). Only this
# entry point does it: a process that imports stt_ingest as a library keeps its own choice.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from stt_ingest.main import main  # noqa: E402

raise SystemExit(main())
