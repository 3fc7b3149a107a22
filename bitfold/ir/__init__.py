"""bitfold's intermediate representation: number formats, custom ops, graph capture."""
