"""The study layer: stages as library calls, the run driver, notebook execution, the recipe grid, the report and its
figures."""
