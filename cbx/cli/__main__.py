from cbx.cli import main

main()
