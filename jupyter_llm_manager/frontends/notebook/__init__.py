"""The notebook front-end: ``%%llm`` and ``%llm`` (magics), one cell's run (cell), the line commands,
their arguments, how answers render, named chats and ``{name}`` interpolation."""
