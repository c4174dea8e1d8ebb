from taktstock.cli import main

main()
