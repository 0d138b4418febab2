from portal_es.entrypoints.cli import main

main()
