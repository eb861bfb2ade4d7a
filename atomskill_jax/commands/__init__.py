"""One module per `atomskill` subcommand; cli.py only wires them."""
