"""bitfold.passes — see DESIGN.md."""
