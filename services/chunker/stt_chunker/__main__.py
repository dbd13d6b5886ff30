from stt_chunker.main import main

main()
