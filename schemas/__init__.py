"""JSON Schemas, the contract with the outside world (package data)."""
