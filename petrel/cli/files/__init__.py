"""The everyday file commands, one module per subcommand: `ls`, `cp`, `cat`, `rm`,
`stat`, `mb`, `rb` (docs/cli.md). They take the URLs and petreloss.conf of
`petrel.Client`; what they share is in petrel/cli/remote.py."""
