"""The synthetic world: seeded scenes, videos and text in the official formats of real datasets."""
