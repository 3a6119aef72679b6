"""The ``genlab`` sub-commands, one module each: ``add(subparsers)`` declares a command's flags, its function
runs it. They wire library calls together and print; the work is done in the library below them."""
