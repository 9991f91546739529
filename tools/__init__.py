"""Developer commands that keep generated project files in step with the code."""
