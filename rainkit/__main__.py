from rainkit.cli import entry

entry()
