from snnrun.cli import main

main()
