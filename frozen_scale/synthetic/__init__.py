"""The built-in synthetic shapes world: scenes, images, captions, questions and text corpus."""
