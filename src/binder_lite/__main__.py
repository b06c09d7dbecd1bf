from binder_lite.cli import main

main()
