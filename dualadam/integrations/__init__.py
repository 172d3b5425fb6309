"""Glue to other libraries' optimizer factories. Each module imports its library only when called, so
``import dualadam`` stays torch-only."""
