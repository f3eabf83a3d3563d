from mambatr.cli import main

main()
