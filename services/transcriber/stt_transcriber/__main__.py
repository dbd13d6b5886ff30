from stt_transcriber.main import main

main()
