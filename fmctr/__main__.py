from fmctr.cli import main

main()
