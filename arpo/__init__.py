"""arpo: recover the prompt behind an image."""
