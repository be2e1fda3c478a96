from agentruns.cli import main

main()
