"""bitfold.codegen — see DESIGN.md."""
