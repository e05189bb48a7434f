"""The app's widgets, one per module: turns, image chips and previews, the prompt, the status bar."""
