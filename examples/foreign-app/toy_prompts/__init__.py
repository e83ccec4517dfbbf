"""A toy Flower app that uses PEP-FedPT's strategy (examples/foreign-app/README.md)."""
