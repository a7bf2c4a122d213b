"""The registered models: building, saving and loading them, and their torch classes."""
