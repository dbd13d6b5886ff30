from stt_notifier.main import main

main()
