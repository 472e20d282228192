from hoopcli.cli import main

main()
