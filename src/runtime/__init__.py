"""How a project process runs: its failures and exit codes, its entry-point guard, who it
is (worker ids), its progress display. Imports nothing heavy."""
