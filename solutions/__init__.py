"""Reference solutions of the Module 10 exercises."""
