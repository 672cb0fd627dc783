"""Learn: rewards, off-policy evaluation and the promotion of new policies."""
