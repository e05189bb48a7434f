"""Modal screens: help, sessions, settings, image picker."""
