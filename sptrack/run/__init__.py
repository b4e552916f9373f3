"""The command line: recipes, configuration overrides, training and the final report."""
