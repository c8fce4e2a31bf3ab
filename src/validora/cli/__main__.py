from validora.cli import main

main()
