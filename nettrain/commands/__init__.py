"""The subcommands, one module each (cli.COMMANDS names them): parse the arguments, call the library, print.
Nothing below this package imports it."""
