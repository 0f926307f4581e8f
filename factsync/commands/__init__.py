"""Sub-commands of the ``factsync`` command line, one module each."""
