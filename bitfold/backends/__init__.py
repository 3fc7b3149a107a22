"""bitfold.backends — see DESIGN.md."""
