from fmctr.commands.cli import main

main()
