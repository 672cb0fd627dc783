"""Where state lives: a narrow protocol and one implementation per backend."""
