from perfd.cli import main

main()
