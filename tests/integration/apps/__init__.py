"""App modules that ``durable-supervisor`` loads in the daemon tests (``app = "...:queue"``)."""
