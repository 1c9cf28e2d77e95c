"""How tagsmith runs: the gateway, the embedded default, the command line and deployment files."""
