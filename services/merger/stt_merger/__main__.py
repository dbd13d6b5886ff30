from stt_merger.main import main

main()
