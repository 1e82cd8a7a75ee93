"""What the applications share: options sections and the recipe loader, Trainer stages, progress and stage lines,
output folders, report rendering."""
