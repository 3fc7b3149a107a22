"""bitfold.recipes — see DESIGN.md."""
