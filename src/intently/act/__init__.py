"""Act: the policies and features that decide what a visitor sees."""
