from hoopcli.entry import main

main()
